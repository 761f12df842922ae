import copy

import torch
from torch import nn

from t2v_train.ema import EMA


def test_ema_follows_the_formula_and_weights_loaded_into_either_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    ema = EMA(model, decay=0.9, start=3, every=2)
    ref = copy.deepcopy(model)
    for step in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        if step == 5:  # a resume: both models get weights loaded in place
            model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
            ema.model.load_state_dict(ref.state_dict())
        ema.update(model, step)
        if step % 2 == 0:
            weight = 1.0 if step < 3 else 0.1
            with torch.no_grad():
                for shadow, p in zip(ref.parameters(), model.parameters()):
                    shadow.copy_(shadow + weight * (p - shadow))
                for shadow, b in zip(ref.buffers(), model.buffers()):
                    shadow.copy_(b)
        for (name, a), b in zip(ema.model.state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-6), (step, name)
    assert not any(p.requires_grad for p in ema.model.parameters())
