"""honed.core.seed.draw_device: a generator draws only on its own device; without one, the draw happens
on the target's device (torch's default generator there)."""
import torch

from honed.core.seed import draw_device
from tests.device_checks import META, cpu_generator


def test_a_generator_draws_on_its_own_device_whatever_the_target():
    assert draw_device(cpu_generator(), META) == torch.device("cpu")
    assert draw_device(cpu_generator(), "cpu") == torch.device("cpu")


def test_without_a_generator_the_draw_happens_on_the_target():
    assert draw_device(None, "meta") == META
    assert draw_device(None, torch.device("cpu")) == torch.device("cpu")


def test_a_draw_made_there_and_moved_keeps_the_cpu_numbers():
    gen = cpu_generator(3)
    moved = torch.rand(5, generator=gen, device=draw_device(gen, META)).to(META)
    again = torch.rand(5, generator=cpu_generator(3), device=draw_device(cpu_generator(), "cpu"))
    assert moved.device == META and torch.equal(again, torch.rand(5, generator=cpu_generator(3)))
