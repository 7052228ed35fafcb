import torch
from torch import nn

from invisible_face.method.refine import RefineSettings, push_target, refine_perturbation, shrink_perturbation
from invisible_face.method.regions import rect_masks
from invisible_face.models.margins import set_margin


class Tiny(nn.Module):
    """Two linear heads on a 4 x 4 thumbnail (resized inside, like the surrogate)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict({"a": nn.Linear(48, 2), "b": nn.Linear(48, 3)})

    def forward(self, x):
        z = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return {k: 10 * h(z - 0.5) for k, h in self.heads.items()}


def test_refine_fools_within_the_budget_and_the_mask():
    model = Tiny().requires_grad_(False)
    torch.manual_seed(1)
    x = 0.45 + 0.1 * torch.rand(4, 3, 24, 24)  # near grey: the budget can move the calls
    with torch.no_grad():
        logits = model(x)
    classes = {k: nn.functional.one_hot(v.argmax(1), v.shape[1]).bool() for k, v in logits.items()}
    mask = rect_masks(torch.tensor([[4.0, 4.0, 20.0, 20.0]] * 4), 24, 24)
    eps = 0.1
    settings = RefineSettings(eps, steps=40, step_size=0.25, stop_margin=0.5, shrink=(0.5, 0.8))
    delta, fooled, final, _ = refine_perturbation(model, x, torch.zeros_like(x), mask, classes, settings)
    assert delta.abs().max() <= eps + 1e-6
    assert (delta * (1 - mask)).abs().max() == 0
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert fooled.all()
    with torch.no_grad():
        after = model(x + delta)
    assert all((after[k].argmax(1) != logits[k].argmax(1)).all() for k in logits)
    assert all(torch.allclose(after[k], final[k], atol=1e-5) for k in logits)  # the logits it returns are of its output


def test_shrink_takes_the_smallest_scale_that_keeps_the_margin():
    model = Tiny().requires_grad_(False)
    torch.manual_seed(2)
    x = 0.45 + 0.1 * torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    classes = {k: nn.functional.one_hot(v.argmax(1), v.shape[1]).bool() for k, v in logits.items()}
    delta, fooled, _, _ = refine_perturbation(model, x, torch.zeros_like(x), torch.ones(3, 1, 16, 16), classes,
                                              RefineSettings(0.2, steps=60, step_size=0.5, stop_margin=0.5))
    assert fooled.all()
    scales = [0.25, 0.5, 0.75, 0.95]
    shrunk, shrunk_logits, found = shrink_perturbation(model, x, delta, classes, scales, stop_margin=0.5)
    with torch.no_grad():
        def passes(d):
            out = model(x + d)
            return torch.stack([set_margin(out[k], classes[k]) < -0.5 for k in classes], 1).all(1)
        per_scale = torch.stack([passes(s * delta) for s in scales], 1)  # B x K, checked one scale at a time
        assert torch.allclose(model(x + shrunk)["a"][found], shrunk_logits["a"][found], atol=1e-5)
    assert found.any() and torch.equal(found, per_scale.any(1))
    for b in range(3):
        if found[b]:
            s = scales[int(per_scale[b].float().argmax())]
            assert torch.allclose(shrunk[b], s * delta[b], atol=1e-6)


def test_refine_leaves_an_already_fooled_face_alone():
    model = Tiny().requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    # sets that hold only the least likely class: every call is already outside them
    classes = {k: nn.functional.one_hot(v.argmin(1), v.shape[1]).bool() for k, v in logits.items()}
    start = torch.full_like(x, 0.01) * (x < 0.99)
    delta, fooled, _, _ = refine_perturbation(model, x, start, torch.ones(2, 1, 16, 16), classes,
                                              RefineSettings(0.1, steps=5, step_size=0.25, stop_margin=0.0))
    assert fooled.all()
    assert torch.allclose(delta, start)


def test_zero_steps_only_clips_the_start():
    model = Tiny().requires_grad_(False)
    x = torch.rand(1, 3, 8, 8)
    classes = {"a": torch.tensor([[True, False]]), "b": torch.tensor([[True, False, False]])}
    delta, _, _, _ = refine_perturbation(model, x, torch.full_like(x, 0.5), torch.ones(1, 1, 8, 8), classes,
                                         RefineSettings(0.05, steps=0, step_size=0.25, stop_margin=1.0))
    assert delta.abs().max() <= 0.05 + 1e-6


def _tiny_case(seed: int, n: int = 4, side: int = 16):
    model = Tiny().requires_grad_(False)
    torch.manual_seed(seed)
    x = 0.45 + 0.1 * torch.rand(n, 3, side, side)
    with torch.no_grad():
        logits = model(x)
    classes = {k: nn.functional.one_hot(v.argmax(1), v.shape[1]).bool() for k, v in logits.items()}
    return model, x, classes


def _worst_margin(model, x, classes) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return torch.stack([set_margin(out[k], classes[k]) for k in classes], 1).max(1).values


def test_push_margin_goes_past_the_stop_margin_and_counts_fooled_at_the_stop():
    model, x, classes = _tiny_case(3)
    args = (model, x, torch.zeros_like(x), torch.ones(4, 1, 16, 16), classes)
    kwargs = dict(steps=60, step_size=0.25, stop_margin=0.5)
    stopped, fooled_stop, _, _ = refine_perturbation(*args, RefineSettings(0.2, **kwargs))
    pushed, fooled_push, _, _ = refine_perturbation(*args, RefineSettings(0.2, **kwargs, push_margin=2.0))
    assert fooled_stop.all() and fooled_push.all()
    assert (_worst_margin(model, x + stopped, classes) > -2.0).any()   # the stop alone ends short of 2
    assert (_worst_margin(model, x + pushed, classes) < -2.0).all()    # the push gets every face there
    assert pushed.abs().mean() > stopped.abs().mean()


def test_push_margin_out_of_reach_still_reports_faces_fooled_at_the_stop():
    model, x, classes = _tiny_case(4)
    delta, fooled, _, _ = refine_perturbation(model, x, torch.zeros_like(x), torch.ones(4, 1, 16, 16), classes,
                                              RefineSettings(0.2, steps=60, step_size=0.25, stop_margin=0.5,
                                                             push_margin=1e6))
    margins = _worst_margin(model, x + delta, classes)
    assert torch.equal(fooled, margins < -0.5) and fooled.any()


def test_views_change_the_steps_and_are_seeded():
    model, x, classes = _tiny_case(5, side=20)
    args = (model, x, torch.zeros_like(x), torch.ones(4, 1, 20, 20), classes)
    kwargs = dict(steps=3, step_size=0.25, stop_margin=50.0)  # out of reach: every step is taken
    plain, _, _, _ = refine_perturbation(*args, RefineSettings(0.2, **kwargs))
    diverse, _, _, _ = refine_perturbation(*args, RefineSettings(0.2, **kwargs, views=3))
    again, _, _, _ = refine_perturbation(*args, RefineSettings(0.2, **kwargs, views=3))
    assert not torch.allclose(plain, diverse)
    assert torch.equal(diverse, again)


def test_push_target_is_the_push_only_past_the_stop():
    assert push_target(1.0, None) == 1.0
    assert push_target(1.0, 2.0) == 2.0
    assert push_target(2.0, 1.0) == 2.0


def test_budget_bounds_each_pixel_and_moves_the_change_into_the_budgeted_half():
    model, x, classes = _tiny_case(6)
    budget = torch.ones(4, 1, 16, 16)
    budget[..., :8] = 0.25  # the left half may use a quarter of epsilon
    delta, fooled, _, _ = refine_perturbation(model, x, torch.zeros_like(x), torch.ones(4, 1, 16, 16), classes,
                                              RefineSettings(0.2, steps=60, step_size=0.25, stop_margin=0.5),
                                              budget=budget)
    assert fooled.any()
    assert (delta.abs() <= 0.2 * budget + 1e-6).all()
    assert delta[..., :8].abs().mean() < 0.5 * delta[..., 8:].abs().mean()


def test_budget_above_one_lets_texture_take_more_than_epsilon_and_the_projection_holds_the_ssim_target():
    from invisible_face.method.visibility import face_ssim, perceptual_projection

    model, x, classes = _tiny_case(6)
    mask = torch.ones(4, 1, 16, 16)
    budget = torch.full((4, 1, 16, 16), 0.5)
    budget[..., 8:] = 3.0  # the right half may take three epsilons
    settings = RefineSettings(0.05, steps=60, step_size=0.5, stop_margin=4.0)
    free, _, _, _ = refine_perturbation(model, x, torch.zeros_like(x), mask, classes, settings, budget=budget)
    assert (free.abs() <= 0.05 * budget + 1e-6).all() and free[..., 8:].abs().max() > 0.05
    target = face_ssim(x, x + free, mask).min().item() + 0.02  # tighter than the free run reached
    held, _, _, _ = refine_perturbation(model, x, torch.zeros_like(x), mask, classes, settings, budget=budget,
                                        project=perceptual_projection(mask, None, target))
    assert (face_ssim(x, x + held, mask) >= target - 1e-4).all()


def test_steps_taken_are_zero_for_a_protected_start_and_counted_otherwise():
    model, x, classes = _tiny_case(7)
    settings = RefineSettings(0.2, steps=60, step_size=0.25, stop_margin=0.5)
    args = (model, x, torch.zeros_like(x), torch.ones(4, 1, 16, 16), classes, settings)
    delta, fooled, _, taken = refine_perturbation(*args)
    assert fooled.all() and (taken > 0).all() and (taken <= 60).all()
    _, _, _, again = refine_perturbation(model, x, delta, *args[3:])
    assert (again == 0).all()  # its own result reaches the margin at the first check


def test_survive_round_trip_runs_only_on_faces_already_past_the_margin():
    model, x, classes = _tiny_case(8)
    seen = []
    def survive(images):
        seen.append(len(images))
        return images
    from invisible_face.method.refine import worst_margins
    with torch.no_grad():
        logits = model(x)
    margins, checked = worst_margins(model, x, logits, classes, survive, stop_margin=0.5)
    assert seen == []  # clean faces sit inside their sets: no round trip needed
    assert (margins > 0).all()
    assert all(torch.equal(checked[k], logits[k]) for k in logits)  # no recheck asked: the logits as given
    flipped = {k: ~c for k, c in classes.items()}  # every call is now outside its set
    with torch.no_grad():
        worst_margins(model, x, logits, flipped, survive, stop_margin=0.0)
    assert seen == [4]


def test_patience_stops_a_stalled_push_early_and_keeps_the_widest_fooled_step():
    model, x, classes = _tiny_case(4)
    args = (model, x, torch.zeros_like(x), torch.ones(4, 1, 16, 16), classes)
    kwargs = dict(steps=60, step_size=0.25, stop_margin=0.5, push_margin=1e6)  # the push never arrives
    _, fooled_all_steps, _, taken_all = refine_perturbation(*args, RefineSettings(0.2, **kwargs))
    delta, fooled, final, taken = refine_perturbation(*args, RefineSettings(0.2, **kwargs, patience=2))
    assert torch.equal(fooled, fooled_all_steps) and fooled.any()
    assert (taken[fooled] < taken_all[fooled]).all()  # it left before the 60 steps
    margins = _worst_margin(model, x + delta, classes)
    assert (margins[fooled] < -0.5).all()
    with torch.no_grad():
        after = model(x + delta)
    assert all(torch.allclose(after[k], final[k], atol=1e-5) for k in after)  # the logits are of the kept step


def test_a_window_steps_the_faces_a_few_at_a_time_with_the_same_result():
    model, x, classes = _tiny_case(9, n=5)
    args = (model, x, torch.zeros_like(x), torch.ones(5, 1, 16, 16), classes,
            RefineSettings(0.2, steps=30, step_size=0.25, stop_margin=0.5, momentum=0.5))
    together, fooled, _, taken = refine_perturbation(*args)
    seen = []
    def counted(images):
        seen.append(len(images))
        return model(images)
    windowed, fooled_w, _, taken_w = refine_perturbation(counted, *args[1:], window=2)
    assert max(seen) <= 2 and len(seen) > 2
    assert torch.equal(fooled, fooled_w) and torch.equal(taken, taken_w)
    assert torch.allclose(together, windowed, atol=1e-5)
