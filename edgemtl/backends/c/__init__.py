"""Our portable C99 backend (the GAP9 target's plain-C path): IntGraph -> C sources, host and rv32 builds.

`generate_c` writes the sources; `run_on_host` / `run_on_qemu` build and run them so tests and flows can
check them bit for bit against `edgemtl.model.intgraph.run_reference`.
"""

from edgemtl.backends.c.build import QemuRun, riscv_tools_missing, run_on_host, run_on_qemu
from edgemtl.backends.c.generate import CSources, check_supported, generate_c

__all__ = ["CSources", "QemuRun", "check_supported", "generate_c", "riscv_tools_missing", "run_on_host", "run_on_qemu"]
