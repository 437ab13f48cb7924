"""Training progress: per-epoch lines always, a live bar only on a terminal (or when asked)."""

import pytest

from lkca_deploy.progress import TrainProgress


@pytest.mark.parametrize("live", [False, True])
def test_epoch_lines_carry_loss_metric_and_eta(live, capsys):
    progress = TrainProgress(0, 2, steps_per_epoch=3, headline="top1", live=live)
    for epoch in range(2):
        for step in range(3):
            progress.step(epoch, 1.0 / (step + 1))
        progress.epoch_done(epoch, 0.5, {"top1": 0.75})
    progress.close()
    err = capsys.readouterr().err
    assert "epoch   1/2  loss 0.5000  test top1 0.7500" in err
    assert "epoch   2/2" in err and "eta   0.0s" in err


def test_disabled_progress_is_silent(capsys):
    progress = TrainProgress(0, 1, steps_per_epoch=1, headline="miou", enabled=False, live=True)
    progress.step(0, 1.0)
    progress.epoch_done(0, 1.0, {"miou": 0.1})
    progress.close()
    assert capsys.readouterr().err == ""
