"""The optimizers params.yaml can name (``train.<variant>.optimizer``), and what each is in torch.

The one list of them: the params models validate against it and :mod:`bplab.train.optim` builds
from it. A leaf module without torch, so validating params.yaml stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OptimizerKind:
    """How an optimizer name is built: its ``torch.optim`` class and which arguments it takes."""

    torch_class: str  # the class's name in torch.optim
    momentum: bool  # takes ``momentum`` (Adam and AdamW have betas instead)


OPTIMIZERS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind("SGD", momentum=True),
    "adam": OptimizerKind("Adam", momentum=False),
    "adamw": OptimizerKind("AdamW", momentum=False),
    "rmsprop": OptimizerKind("RMSprop", momentum=True),
}
OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]
