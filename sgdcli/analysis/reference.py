"""What `sgdcli optimizers` prints: each optimizer's exact rule, defaults and other libraries' conventions."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from sgdcli.config import schema as cfg


@dataclass(frozen=True)
class OptimizerReference:
    type: str
    rule: str
    defaults: dict[str, object]
    conventions: str


RULES = {
    cfg.SgdConfig: (
        "momentum 0:  w -= lr * g\n"
        "momentum m:  v = m * v - lr * g;  w += v                      (v starts at 0)\n"
        "nesterov:    v = m * v - lr * g;  w += m * v - lr * g",
        "Keras SGD: the same formulas. PyTorch SGD keeps v' = m * v' + g and does w -= lr * v': identical "
        "while lr is constant, but when a schedule changes lr, PyTorch rescales the whole accumulated "
        "velocity at once, sgdcli (like Keras) only the new gradient's share. PyTorch's `dampening` is 0 here.",
    ),
    cfg.AdagradConfig: (
        "G += g * g;  w -= lr * g / (sqrt(G) + epsilon)                 (G starts at initial_accumulator)",
        "epsilon is outside the square root, as in PyTorch. Keras 3 puts it inside: "
        "w -= lr * g / sqrt(G + epsilon). Defaults follow PyTorch (initial_accumulator 0, epsilon 1e-10); "
        "Keras starts the accumulator at 0.1 with epsilon 1e-7, which makes its first steps smaller.",
    ),
    cfg.RmspropConfig: (
        "s = rho * s + (1 - rho) * g * g\n"
        "momentum 0:  w -= lr * g / (sqrt(s) + epsilon)\n"
        "momentum m:  b = m * b + g / (sqrt(s) + epsilon);  w -= lr * b  (s, b start at 0)",
        "rho 0.9 is Keras' and Hinton's default; PyTorch calls it alpha and defaults to 0.99. epsilon is "
        "outside the square root as in PyTorch; Keras 3 puts it inside: g / sqrt(s + epsilon). The momentum "
        "form is PyTorch's; Keras keeps lr inside its buffer (b = m * b + lr * g / sqrt(s + epsilon); w -= b), "
        "which differs only when a schedule changes lr.",
    ),
    cfg.AdamConfig: (
        "t += 1;  m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g\n"
        "w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + epsilon)",
        "As in PyTorch (epsilon 1e-8, added to the square root of the bias-corrected v). Keras adds "
        "epsilon before the bias correction, w -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + "
        "epsilon): the 'epsilon hat' of Kingma & Ba, section 2, equal to epsilon * sqrt(1 - beta2^t) here; "
        "and defaults it to 1e-7. The first step moves every weight by about lr * sign(g).",
    ),
    cfg.AdamwConfig: (
        "w -= lr * weight_decay * w;  then the Adam update",
        "Decoupled weight decay as in PyTorch's AdamW (default 0.01); Keras' AdamW defaults to 0.004.",
    ),
    cfg.PerturbConfig: (
        "for each coefficient w_i in turn (all others frozen):\n"
        "    try w_i + delta and w_i - delta; keep whichever lowers the batch loss (or keep w_i)",
        "Not a gradient method: one update costs 1 + 2 * (number of coefficients) forward passes, "
        "against one forward and one backward pass for a gradient step. Shown for comparison.",
    ),
}
WEIGHT_DECAY = (
    "weight_decay (all but adamw and perturb) adds weight_decay * w to the gradient of every weight and "
    "bias, like PyTorch's weight_decay over all parameters. A Keras kernel_regularizer l2(c) adds c * sum(w^2) "
    "to the loss, i.e. 2c * w to the gradient of the kernel only: weight_decay = 2c matches it for the kernels, "
    "and Keras needs bias_regularizer l2(c) as well to decay the biases as sgdcli does."
)
EFFECTIVE_STEP = (
    "Effective step of momentum: on a steady gradient g the velocity settles at -lr * g / (1 - momentum), "
    "so momentum m moves 1 / (1 - m) times as far per update as plain SGD with the same lr "
    "(m = 0.9: 10x, m = 0.99: 100x). Lower lr by that factor when adding momentum to compare like with like."
)


def optimizers() -> list[OptimizerReference]:
    """One entry per optimizer type the config accepts, in schema order."""
    entries = []
    for config_class, (rule, conventions) in RULES.items():
        fields = {name: field for name, field in config_class.model_fields.items() if name not in ("type", "schedule")}
        required = {name: "required" for name, field in fields.items() if field.is_required()}
        defaults = {name: field.default for name, field in fields.items()
                    if not field.is_required() and field.default is not None}
        kind = typing.get_args(config_class.model_fields["type"].annotation)[0]
        entries.append(OptimizerReference(kind, rule, {**required, **defaults}, conventions))
    return entries
