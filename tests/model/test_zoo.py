import pytest
import torch

from conftest import tiny_model
from edgemtl.model.contract import run_task
from edgemtl.model.zoo import build_model, full_config
from edgemtl.model.zoo.m3vit import MoELayer
from edgemtl.errors import EdgemtlError


@pytest.mark.parametrize("arch", ["mtl-cnn", "m3vit"])
def test_outputs_match_spec_and_task_paths_match_full_forward(arch):
    model, spec = tiny_model(arch)
    x = torch.randn(2, *spec.input.shape)
    with torch.no_grad():
        everything = model(x)
        for task in spec.tasks:
            assert list(everything[task.name].shape) == [2, *task.output_shape]
            alone = run_task(model, x, task.name)
            torch.testing.assert_close(alone, everything[task.name], rtol=0, atol=0)


@pytest.mark.parametrize("capacity_factor, training", [(None, True), (0.5, False)], ids=["training-no-capacity-limit", "inference-dropless"])
def test_expert_major_dispatch_equals_token_major_reference(capacity_factor, training):
    """Training without a capacity limit, and inference whatever the capacity, drop no token."""
    torch.manual_seed(0)
    layer = MoELayer(dim=16, hidden=32, num_experts=8, top_k=2, task_dim=4, capacity_factor=capacity_factor).train(training)
    x, task_vector = torch.randn(3, 10, 16), torch.randn(4)
    torch.testing.assert_close(layer(x, task_vector), layer.forward_reference(x, task_vector), rtol=1e-5, atol=1e-6)
    assert layer.tokens_dropped == 0 and layer.tokens_routed == 3 * 10 * 2


def test_moe_capacity_drops_overflow_tokens_and_counts_them():
    torch.manual_seed(0)
    layer = MoELayer(dim=8, hidden=8, num_experts=2, top_k=1, task_dim=2, capacity_factor=0.5).train()
    with torch.no_grad():  # route every token to expert 0 so half of them overflow its capacity
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, -5.0]))
    x = torch.randn(1, 8, 8)
    out = layer(x, torch.zeros(2))
    assert layer.capacity(8) == 2
    assert layer.tokens_routed == 8 and layer.tokens_dropped == 6
    assert int((out.abs().sum(-1) > 0).sum()) == 2  # only the tokens that fit got an expert's output


def test_router_depends_on_task():
    model, spec = tiny_model("m3vit")
    layer = model.moe_layers()[0]
    x = torch.randn(1, 16, layer.router.in_features - model.task_embed.shape[1])
    with torch.no_grad():
        model.task_embed.normal_(0, 1.0)
        a = layer.gates(x, model.task_embed[0])[0]
        b = layer.gates(x, model.task_embed[1])[0]
    assert not torch.allclose(a, b)


def test_training_accumulates_a_load_balancing_loss():
    _, tiny = tiny_model("m3vit")
    spec = tiny.model_copy(update={"config": {**tiny.config, "routing_loss": "switch"}})
    model = build_model(spec).train()
    model(torch.randn(2, *spec.input.shape))
    aux = model.auxiliary_loss()
    assert aux.item() > 0 and aux.requires_grad
    assert model.auxiliary_loss().item() == 0  # reset after reading


def test_unknown_config_key():
    with pytest.raises(EdgemtlError, match="unknown mtl-cnn config key"):
        full_config("mtl-cnn", {"depth": 3})
