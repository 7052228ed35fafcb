"""The defender's surrogate: several models attacked as one (docs/design.md, "The defender's ensemble").

A face is protected only when every member is fooled, so the members' calls are kept apart rather
than averaged: the ensemble's output is one dict of logits holding every member's attributes. The
first member answers under the plain attribute names (code that reads one model's calls, G's
condition among them, reads it unchanged); each other member's answer is ``<member>/<attribute>``.
Everything that works on a dict of logits (plausible sets, set margins, the refinement, its checks)
then treats each member's attribute as one more head to fool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

SEP = "/"


def member_key(member: str, attribute: str, first: bool) -> str:
    """The ensemble's key for ``member``'s call of ``attribute``."""
    return attribute if first else f"{member}{SEP}{attribute}"


def attribute_of(key: str) -> str:
    """The attribute an ensemble key answers (``<member>/<attribute>`` or the plain name)."""
    return key.rsplit(SEP, 1)[-1]


def member_groups(keys: Iterable[str]) -> list[list[str]]:
    """The keys of each ensemble member (``<member>/<attribute>``, the first member's plain), in order;
    a single model's keys are one group."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rsplit(SEP, 1)[0] if SEP in key else "", []).append(key)
    return list(groups.values())


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Each of B x ... scaled to unit L2 norm (zeros stay zero)."""
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))


def first_member_calls(logits: dict[str, Any]) -> dict[str, Any]:
    """The first member's entries of an ensemble output (its plain attribute names)."""
    return {k: v for k, v in logits.items() if SEP not in k}


class SurrogateEnsemble(nn.Module):
    """forward(x: B x 3 x H x W in [0, 1]) -> {key: B x C logits} for every member's every attribute
    (:func:`member_key`). ``members``: name -> model with the classifiers' interface, first = primary."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleDict(members)

    @property
    def primary(self) -> nn.Module:
        """The first member: G's surrogate (DP, the sets G is conditioned on, the regions)."""
        return next(iter(self.members.values()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, (name, model) in enumerate(self.members.items()):
            out |= {member_key(name, a, i == 0): v for a, v in model(x).items()}
        return out

    def config(self) -> dict[str, Any]:
        return {"members": {name: m.config() for name, m in self.members.items()}}


def surrogate_from_state(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """A saved surrogate from its config and state dict: an ensemble (``members``), a face-backbone
    surrogate or a classifier, in eval mode, frozen."""
    from invisible_face.models.face_backbone import ARCH, FaceBackboneSurrogate
    from invisible_face.models.networks import classifier_from_state

    if "members" in cfg:
        members = {name: surrogate_from_state(c, {k[len(f"members.{name}."):]: v for k, v in state.items()
                                                   if k.startswith(f"members.{name}.")})
                   for name, c in cfg["members"].items()}
        return SurrogateEnsemble(members).eval().requires_grad_(False)
    if cfg.get("arch") == ARCH:
        return FaceBackboneSurrogate.from_state(cfg, state)
    return classifier_from_state(cfg, state).requires_grad_(False)
