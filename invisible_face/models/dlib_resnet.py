"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The file is dlib's own serialisation (dlib/serialize.h, dlib/dnn/*.h), parsed here in pure Python
and numpy, so the 128-D embedding can be differentiated with respect to the chip's pixels. The
architecture is ``anet_type`` of dlib's tools/python/src/face_recognition.cpp, written out below
outermost layer first, the order the file stores its wrapper versions in.

chip (N x 3 x 150 x 150, RGB in [0, 1]) -> (255 x - mean) / 256 -> 29 conv layers -> N x 128, the
fc output exactly as ``compute_face_descriptor`` returns it (dlib does not L2-normalise it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.data.landmarks import face_recognition_models_dir

CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # compute_face_descriptor's default padding for get_face_chip_details
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

Layer = tuple  # ("con", filters, kernel, stride) | ("affine",) | ("relu",) | ("tag", id) | ...


def _block(n: int, stride: int, sub: list[Layer]) -> list[Layer]:
    return [("affine",), ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, stride), *sub]


def _ares(n: int, sub: list[Layer]) -> list[Layer]:
    return [("relu",), ("add_prev", 1), *_block(n, 1, [("tag", 1), *sub])]


def _ares_down(n: int, sub: list[Layer]) -> list[Layer]:
    return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2), ("skip", 1), ("tag", 2),
            *_block(n, 2, [("tag", 1), *sub])]


def anet_type() -> list[Layer]:
    """dlib's ``anet_type``, outermost layer first (the loss layer left out)."""
    net: list[Layer] = [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2), ("input",)]
    for wrap, n, times in [(_ares, 32, 3), (_ares_down, 64, 1), (_ares, 64, 3), (_ares_down, 128, 1),
                           (_ares, 128, 2), (_ares_down, 256, 1), (_ares, 256, 2), (_ares_down, 256, 1)]:
        for _ in range(times):
            net = wrap(n, net)
    return [("fc", 128), ("avg_pool_everything",), *net]


class _Reader:
    """dlib's serialisation primitives over a bytes buffer; every failure is a ValueError."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.name}: not a dlib face-recognition ResNet file ({what} at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: {n} bytes wanted, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        # control byte: bit 7 sign, low 4 bits the byte count; then the magnitude, little-endian
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def str(self) -> str:
        n = self.int()
        if not 0 <= n <= 256:
            raise self.fail(f"implausible string length {n}")
        return self.take(n).decode("latin-1")

    def float(self) -> float:
        # float_details: mantissa then exponent (serialize.h's comment says the reverse)
        mantissa = self.int()
        return float(mantissa * 2.0 ** self.int())

    def bool(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}")
        return c == b"1"

    def name_in(self, *allowed: str) -> str:
        start, s = self.pos, self.str()
        if s not in allowed:
            self.pos = start
            raise self.fail(f"record {s!r} where {' or '.join(allowed)} was expected")
        return s

    def tensor(self) -> np.ndarray:
        if (v := self.int()) != 2:
            raise self.fail(f"tensor version {v}")
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"tensor shape {shape}")
        count = int(np.prod(shape, dtype=object))
        return np.frombuffer(self.take(4 * count), "<f4").reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if (v := self.int()) != 1:
            raise self.fail(f"alias_tensor version {v}")
        return tuple(self.int() for _ in range(4))


def _read_layer(r: _Reader, layer: Layer) -> dict:
    """One layer's details record, checked against ``layer`` -> its tensors (numpy)."""
    kind = layer[0]

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise r.fail(f"{kind} layer {layer}: {what}")

    if kind == "con":
        version = r.name_in("con_4", "con_5", "con_6")
        params = r.tensor().ravel()
        filters, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        _, n, k = layer[:3]
        check((filters, nr, nc, sy, sx) == (n, k, k, layer[3], layer[3]), f"found {filters} x {nr} x {nc} / {sy}")
        check((py, px) == ((k // 2, k // 2) if layer[3] == 1 else (0, 0)), f"padding {py}, {px}")
        w_shape, _ = r.alias(), r.alias()  # filters; biases are the rest of params
        [r.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
        use_bias = r.bool() if version != "con_4" else True
        if version == "con_6":
            check(not r.bool(), "fused relu")
        nw = int(np.prod(w_shape))
        check(params.size == nw + (n if use_bias else 0), "params size")
        bias = params[nw:] if use_bias else np.zeros(n, np.float32)
        return {"weight": params[:nw].reshape(w_shape), "bias": bias}
    if kind == "affine":
        version = r.name_in("affine_", "affine_2")
        params = r.tensor().ravel()
        g, b = r.alias(), r.alias()
        check(r.int() == 0, "not conv mode")  # CONV_MODE: one gamma, beta per channel
        if version == "affine_2":
            check(not r.bool(), "disabled")
        ng = int(np.prod(g))
        check(params.size == ng + int(np.prod(b)), "params size")
        return {"gamma": params[:ng], "beta": params[ng:]}
    if kind == "relu":
        if r.name_in("relu_", "relu_2") == "relu_2":
            check(not r.bool(), "disabled")
        return {}
    if kind in ("max_pool", "avg_pool", "avg_pool_everything"):
        r.name_in(f"{kind.removesuffix('_everything')}_2")
        dims = tuple(r.int() for _ in range(6))
        want = (0, 0, 1, 1, 0, 0) if kind == "avg_pool_everything" else (layer[1], layer[1], layer[2], layer[2], 0, 0)
        check(dims == want, f"window, stride, padding {dims}")
        return {}
    if kind == "add_prev":
        r.name_in("add_prev_")
        return {}
    if kind == "fc":
        version = r.name_in("fc_2", "fc_3")
        outputs, inputs = r.int(), r.int()
        params = r.tensor().ravel()
        w, _ = r.alias(), r.alias()
        check(r.int() == 1, "has a bias")  # FC_NO_BIAS
        [r.float() for _ in range(4)]
        if version == "fc_3":
            r.bool()
        check(outputs == layer[1] and params.size == inputs * outputs == int(np.prod(w)), "size")
        return {"weight": params.reshape(inputs, outputs).T}  # stored inputs x outputs
    raise AssertionError(kind)


def read_dlib_face_net(path: str | Path) -> tuple[list[Layer], list[dict], tuple[float, float, float]]:
    """Parse the file -> (layers from the input outwards, their tensors, the RGB input means)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path.name)
    if r.int() != 1:
        raise r.fail("add_loss_layer version")
    if r.name_in("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold: training only
    outer_first = anet_type()
    # one version per wrapper, outside in: add_layer 1 or 2 (2 or 3 around the input), tag and skip 1
    versions = []
    for i, layer in enumerate(outer_first[:-1]):
        want = (1,) if layer[0] in ("tag", "skip") else (2, 3) if i == len(outer_first) - 2 else (1, 2)
        if (v := r.int()) not in want:
            raise r.fail(f"wrapper {i} ({layer[0]}): version {v}, the layer stack is not dlib's anet_type")
        versions.append(v)
    r.name_in("input_rgb_image_sized")
    means = (r.float(), r.float(), r.float())
    if (r.int(), r.int()) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail("input size")
    layers, tensors = outer_first[-2::-1], []
    for i, (layer, version) in enumerate(zip(layers, versions[::-1])):
        if layer[0] in ("tag", "skip"):
            tensors.append({})  # store nothing after their version
            continue
        tensors.append({k: torch.from_numpy(v.copy()) for k, v in _read_layer(r, layer).items()})
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, ..._disabled
            r.bool()
        r.tensor(), r.tensor()  # x_grad, cached_output
        if i == 0:  # around the input: grad_final, then (version 3) sample_expansion_factor
            r.tensor()
            if version == 3:
                r.int()
        elif version == 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left over")
    return layers, tensors, means


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the larger shape, the smaller tensor zero-padded at the end of each axis."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class DlibFaceNet(nn.Module):
    """dlib's ResNet: forward(chips N x 3 x 150 x 150 RGB in [0, 1]) -> N x 128 (not normalised).

    Each ``affine`` (dlib's frozen batch norm) is folded into the convolution before it: one op
    fewer per layer on the attack loops' hot path, and equal to dlib's output within 1e-6.
    Activations run channels_last: on CPU about 1.2x faster in float32, 2x under bfloat16 autocast."""

    def __init__(self, layers: list[Layer], tensors: list[dict], means: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32).view(1, 3, 1, 1))
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        self.program: list[tuple] = []
        for layer, t in zip(layers, tensors):
            kind = layer[0]
            if kind == "con":
                self.weights.append(nn.Parameter(t["weight"]))
                self.biases.append(nn.Parameter(t["bias"]))
                k, stride = layer[2], layer[3]
                self.program.append(("con", len(self.weights) - 1, stride, k // 2 if stride == 1 else 0))
            elif kind == "affine":
                if self.program[-1][0] != "con":
                    raise ValueError("an affine layer that does not follow a convolution")
                i = self.program[-1][1]
                gamma, beta = t["gamma"], t["beta"]
                self.weights[i].data.mul_(gamma.view(-1, 1, 1, 1))
                self.biases[i].data.mul_(gamma).add_(beta)
            elif kind == "fc":
                self.fc = nn.Parameter(t["weight"].contiguous())
                self.program.append(("fc",))
            elif kind != "input":
                self.program.append(layer)
        for w in self.weights:
            w.data = w.data.contiguous(memory_format=torch.channels_last)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """chips N x 3 x 150 x 150 float RGB in [0, 1] -> N x 128 (dlib's compute_face_descriptor)."""
        if chips.shape[1:] != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"chips must be N x 3 x {CHIP_SIZE} x {CHIP_SIZE}, got {tuple(chips.shape)}")
        x = ((chips * 255 - self.mean) / 256).contiguous(memory_format=torch.channels_last)
        tags: dict[int, torch.Tensor] = {}
        for op in self.program:
            kind = op[0]
            if kind == "con":
                x = F.conv2d(x, self.weights[op[1]], self.biases[op[1]], op[2], op[3])
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "max_pool":
                x = F.max_pool2d(x, op[1], op[2])
            elif kind == "avg_pool":
                x = F.avg_pool2d(x, op[1], op[2])
            elif kind == "tag":
                tags[op[1]] = x
            elif kind == "skip":
                x = tags[op[1]]
            elif kind == "add_prev":
                x = _add_padded(x, tags[op[1]])
            elif kind == "avg_pool_everything":
                x = x.mean((2, 3))
            elif kind == "fc":
                x = F.linear(x, self.fc)
        return x


def load_dlib_face_net(path: str | Path | None = None) -> DlibFaceNet:
    """A new eval-mode DlibFaceNet, parameters frozen; ``path`` defaults to face-recognition-models' file."""
    net = DlibFaceNet(*read_dlib_face_net(path or face_recognition_models_dir() / MODEL_FILE))
    net.requires_grad_(False)
    return net.eval()


@lru_cache(maxsize=1)
def shared_dlib_face_net() -> DlibFaceNet:
    """One DlibFaceNet per process (callers must not move or modify it)."""
    return load_dlib_face_net()
