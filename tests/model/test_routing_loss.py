"""The m3vit's task-expert mutual-information routing loss (Mod-Squad) and the expert use training records."""

import math

import pytest
import torch

from conftest import tiny_model
from edgemtl.data import data_spec, load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.model.zoo.m3vit import mutual_information_loss
from edgemtl.training import TrainConfig, train


def _task_probs(sharpness: float) -> torch.Tensor:
    """Two tasks over four experts: task 0 prefers experts 0-1, task 1 experts 2-3, more so as `sharpness` grows."""
    preference = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    return (sharpness * preference).softmax(dim=1)


def test_the_loss_falls_as_each_tasks_routing_sharpens():
    losses = [mutual_information_loss(_task_probs(s)).item() for s in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[0] == pytest.approx(0.0, abs=1e-7)                # every task on every expert: no information
    assert losses[-1] == pytest.approx(-math.log(2), abs=1e-3)      # disjoint halves: one bit


def test_all_tasks_collapsing_onto_one_expert_earns_nothing():
    """Unlike a per-task entropy penalty, the loss does not reward every task choosing the same expert."""
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 3)
    assert mutual_information_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information_loss(_task_probs(4.0)).item() < -0.5


def test_minimising_it_gives_each_task_its_own_few_experts():
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.01 * torch.randn(4, 8))     # four tasks' router preferences over eight experts
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(300):
        optimiser.zero_grad()
        mutual_information_loss(logits.softmax(dim=1)).backward()
        optimiser.step()
    probs = logits.softmax(dim=1).detach()
    top_half_mass = probs.topk(4, dim=1).values.sum(dim=1)
    assert (top_half_mass > 0.95).all(), probs                 # each task on at most half of the experts
    assert len(set(probs.argmax(dim=1).tolist())) == 4, probs  # and not the same ones: the tasks' main experts differ
    assert mutual_information_loss(probs).item() == pytest.approx(-math.log(4), abs=0.01)  # I(T;E) at its H(T) bound


def test_an_mi_trained_m3vit_records_its_loss_and_each_tasks_expert_use():
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("m3vit", input_spec, tasks, {"dim": 16, "depth": 2, "heads": 2, "num_experts": 4, "task_dim": 4,
                                                 "head_width": 4, "routing_loss": "mi", "mi_loss_weight": 0.5}, data="scenes")
    torch.manual_seed(0)
    model = build_model(spec).train()
    model(torch.randn(2, *spec.input.shape))
    loss = model.auxiliary_loss()
    assert loss.requires_grad and -0.5 * math.log(4) <= loss.item() <= 0     # weight x -MI, MI <= log(experts)
    assert model.auxiliary_loss().item() == 0                                # read once, then reset
    result = train(model, spec, load_data("scenes", "train", n=16), TrainConfig(steps=3, batch_size=4, warmup_steps=1),
                   show_progress=False)
    assert list(result.expert_usage) == ["blocks.1"]                         # the one MoE layer of a depth-2 model
    shares = result.expert_usage["blocks.1"]
    assert set(shares) == set(spec.task_names)
    assert all(len(s) == 4 and sum(s) == pytest.approx(1.0) for s in shares.values())


def test_a_checkpoint_config_from_before_the_routing_loss_builds_with_switch_balancing():
    model, spec = tiny_model("m3vit")
    old_config = {k: v for k, v in spec.config.items() if k not in ("routing_loss", "mi_loss_weight")}
    rebuilt = build_model(spec.model_copy(update={"config": old_config}))
    assert rebuilt.routing_loss == "switch" and rebuilt.aux_loss_weight == spec.config["aux_loss_weight"]


def test_an_unknown_routing_loss_is_refused():
    input_spec, tasks = data_spec("scenes")
    with pytest.raises(EdgemtlError, match="routing_loss must be one of switch, mi, got 'entropy'"):
        build_model(zoo_spec("m3vit", input_spec, tasks, {"routing_loss": "entropy"}, data="scenes"))


def test_edgemtl_train_prints_and_records_each_tasks_expert_use(capsys, tmp_path):
    from test_cli import run_cli

    code, out, err = run_cli(capsys, "train", "--arch", "m3vit", "--steps", "2", "--batch-size", "4", "--train-samples", "8",
                             "--config", "routing_loss=mi", "--config", "dim=16", "--config", "depth=2", "--config",
                             "heads=2", "-o", tmp_path / "m.pt")
    assert code == 0, err
    assert "expert use in the last 10% of training steps" in out
    record = torch.load(tmp_path / "m.pt", weights_only=True)["meta"]["train"]
    assert set(record["expert_usage"]["blocks.1"]) == {"segmentation", "depth", "normals", "edges", "scene"}


def test_identical_routing_is_a_stationary_point_so_the_tasks_must_start_apart():
    """Where every task routes alike the loss has no gradient (2026-12-05: with task embeddings of std 0.02 the MI
    loss left every task on 7 and 5 of 8 experts); embeddings of std 1.0 start the tasks' routing apart."""
    shared = torch.randn(1, 4).repeat(3, 1).requires_grad_()
    mutual_information_loss(shared.softmax(dim=1)).backward()
    assert torch.allclose(shared.grad, torch.zeros_like(shared.grad), atol=1e-7)
    input_spec, tasks = data_spec("scenes")
    data = load_data("scenes", "val", n=4)
    images = torch.from_numpy(data.normalise(data.images))
    information = {}
    for std in (0.02, 1.0):
        spec = zoo_spec("m3vit", input_spec, tasks, {"routing_loss": "mi", "task_embed_std": std}, data="scenes")
        torch.manual_seed(0)
        model = build_model(spec).train()
        model(images)
        information[std] = -model.auxiliary_loss().item() / spec.config["mi_loss_weight"]
    assert information[1.0] > 10 * information[0.02]


def test_mi_training_drops_no_token_when_a_task_concentrates_on_one_expert():
    """The MI loss makes a task route most tokens to few experts; the balanced capacity of Switch training (k*T/E x
    capacity factor per expert) then dropped 6-50% of each task's routed tokens (measured on scenes, 800 steps), which
    trained the model on a computation that inference (dropless) never runs."""
    from edgemtl.model.zoo.m3vit import MoELayer

    torch.manual_seed(0)
    layer = MoELayer(dim=8, hidden=16, num_experts=4, top_k=2, task_dim=2, capacity_factor=1.0).train()
    layer.routing_loss = "mi"
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, 4.0, 0.0, 0.0]))   # every token to experts 0 and 1
    x, task_vector = torch.randn(3, 10, 8), torch.zeros(2)
    out = layer(x, task_vector)
    assert layer.tokens_dropped == 0 and layer.tokens_routed == 3 * 10 * 2
    torch.testing.assert_close(out, layer.forward_reference(x, task_vector))
