"""01-mpc-data-selection experiment (SelectFormer, arXiv:2310.02373): the validation-only setting check."""
from dataclasses import replace

import honed.experiments.e01_mpc_data_selection as e01
from honed.data import create_dataset
from honed.data.base import Dataset

TINY = replace(e01.MPCSelectionConfig(), pool_size=40, budget=5, target_blocks=2, proxy_blocks=(1, 1),
               pretrain_epochs=1, adapt_epochs=1, finetune_epochs=1)


def test_validation_gap_never_reads_the_test_split(monkeypatch):
    real = create_dataset("digits", flat=True)
    monkeypatch.setattr(e01, "create_dataset", lambda *a, **k: Dataset(real.name, real.train, real.val, None,
                                                                      real.num_classes))
    out = e01.validation_oracle_gap(TINY, seeds=(0, 1))
    assert set(out) == {"oracle", "random", "gap"} and all(len(v) == 2 for v in out.values())
    assert all(0.0 <= a <= 1.0 for a in out["oracle"] + out["random"])
    assert out["gap"] == [o - r for o, r in zip(out["oracle"], out["random"])]


def test_full_preset_has_a_12_block_target_and_shallower_proxies():
    full, small = e01.MPCSelectionConfig.full(), e01.MPCSelectionConfig.small()
    full.validate()
    assert full.target_blocks == 12 and full.proxy_blocks == (1, 2) and full.proxy_widths == (2, 8)
    assert all(b < full.target_blocks for b in full.proxy_blocks) and full.mpc_examples == 128
    assert small.target_blocks == 4 and small.mpc_examples == 32 and e01.MPCSelectionConfig.smoke().target_blocks == 4
