"""Issue 18's guard (weak but cheap): no component of honed defaults a ``device`` parameter to the CPU.
A component follows the device of the model or input it is given (or torch's default device when it
builds something from nothing); the few places named below are not components, or keep the CPU on
purpose, and say why."""
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "honed"
CPU_DEFAULT = re.compile(r"""\bdevice\b[^=,()\n]*=\s*["']cpu["']""")
ALLOWED = {
    "core/runner.py": "run folders are named after the CLI's --device, whose default is cpu",
    "core/benchmark.py": "the machine record of a CPU benchmark",
    "core/checkpoint.py": "load_tensors' map_location: files load onto the CPU unless asked",
    "generative/transfer_gan.py": "degrade()'s noise comes from a CPU generator on purpose (same images on every device)",
}


def cpu_defaults() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("experiments/") or rel in ALLOWED:
            continue
        found += [f"{rel}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if CPU_DEFAULT.search(line)]
    return found


def test_no_component_defaults_its_device_to_the_cpu():
    assert cpu_defaults() == [], "use device=None (follow the model / input, or torch's default device)"


def test_the_guard_sees_a_cpu_default():
    assert CPU_DEFAULT.search('def f(x, device: str | torch.device = "cpu") -> None:')
    assert CPU_DEFAULT.search("    gen = torch.Generator(device='cpu')")
    assert not CPU_DEFAULT.search("def f(x, device: str | torch.device | None = None) -> None:")
