"""Knowledge distillation components."""
