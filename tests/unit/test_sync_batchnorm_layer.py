"""ddtrain's SyncBatchNorm: same parameters and state dict as the BatchNorm it replaces; refused outside ddp."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddtrain.compose import compose
from ddtrain.validation import validate
from ddtrain.distributed import syncbn
from ddtrain.errors import UserError
from ddtrain.models.resnet import resnet20


def test_convert_keeps_parameters_buffers_and_keys():
    model = resnet20(3, 10)
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    converted = syncbn.convert(model)
    assert syncbn.count(model) == 19 + 2 and all(
        isinstance(m, syncbn.SyncBatchNorm) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert list(converted.state_dict()) == keys
    assert all(p is before[name] for name, p in converted.named_parameters())  # the optimizer's very tensors


def test_one_process_behaves_as_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    synced = syncbn.convert(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(8, 4, 5, 5)
    torch.testing.assert_close(synced(x), bn(x))
    torch.testing.assert_close(synced.running_var, bn.running_var)


@pytest.mark.parametrize("engine", ["mpi", "horovod"])
def test_other_engines_refuse_it_in_one_line(engine):
    cfg = compose("train", ["model=resnet20", "model.sync_batchnorm=true", f"dist.engine={engine}"])
    with pytest.raises(UserError, match=f"model.sync_batchnorm=true needs dist.engine=ddp; dist.engine={engine}"):
        validate(cfg, 2)
