import torch

from t2v_train.trainer import make_optimizer


def _run(opt_fn, steps=5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
    opt = opt_fn(model.parameters())
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(steps):
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt, [p.detach().clone() for p in model.parameters()]


def test_fused_adamw_on_cpu_matches_the_reference_update():
    opt, fused = _run(lambda ps: make_optimizer(ps, 1e-2, (0.9, 0.99), 0.01))
    assert opt.defaults["fused"] is True  # the fast path is actually taken on CPU
    _, plain = _run(lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, foreach=False))
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_optimizer_state_round_trips_through_state_dict():
    opt, _ = _run(lambda ps: make_optimizer(ps, 1e-3))
    state = opt.state_dict()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
    fresh = make_optimizer(model.parameters(), 1e-3)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"][0]["step"] == state["state"][0]["step"]
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
