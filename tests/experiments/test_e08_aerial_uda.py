"""08-aerial-uda: the source-only BatchNorm control shares the adapted arms' joint pass (its BN running
statistics see target images) but learns from the source loss alone."""
import torch

from honed.experiments.e08_aerial_uda import joint_source_step
from honed.models import create_model
from honed.vision.output_space_uda import OutputSpaceUDAStep


def test_joint_control_sees_target_in_batchnorm_but_only_source_in_the_loss():
    gen = torch.Generator().manual_seed(0)
    x_s, x_t = torch.rand(2, 3, 8, 8, generator=gen), 5 + torch.rand(2, 3, 8, 8, generator=gen)
    y_s = torch.randint(0, 3, (2, 8, 8), generator=gen)

    def run(with_target):
        torch.manual_seed(0)
        model = create_model("unet_s", in_channels=3, num_classes=3, widths=(4, 8))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: only BN statistics move
        step = OutputSpaceUDAStep(model, opt, lambda_adv=0.0, lambda_ent=0.0)
        if with_target:
            terms = joint_source_step(step, x_s, y_s, x_t)
        else:
            terms = step(x_s, y_s)
        return model, terms

    joint, joint_terms = run(True)
    plain, plain_terms = run(False)
    first_bn = lambda m: next(b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))  # noqa: E731
    assert not torch.allclose(first_bn(joint).running_mean, first_bn(plain).running_mean)
    assert set(joint_terms) == {"seg"} and joint_terms["seg"] > 0
