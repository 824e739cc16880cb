"""Knowledge-distillation losses.

QD-LLM (arXiv 2505.13205) trains its student on a mix of the true labels and the teacher's soft
labels: cross-entropy, Hinton's temperature-softened KL term, and a Jensen-Shannon term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``JS(softmax(s), softmax(t))`` in nats (between 0 and ln 2).

    ``JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)`` with ``m = (p + q) / 2``; ``log m`` is computed from the
    log-probabilities with ``logsumexp``, so confident (near one-hot) distributions stay finite.
    """
    log_p = F.log_softmax(student_logits, dim=-1)
    log_q = F.log_softmax(teacher_logits, dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = F.kl_div(log_m, log_p, log_target=True, reduction="batchmean")
    kl_qm = F.kl_div(log_m, log_q, log_target=True, reduction="batchmean")
    return 0.5 * (kl_pm + kl_qm)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """QD-LLM's loss, averaged over the batch:

        L = (1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + α·JS(softmax(s), softmax(t))

    ``s``, ``t`` are ``(batch, classes)`` logits and ``y`` the ``(batch,)`` integer labels. The KL
    term uses the temperature ``T`` (its ``T²`` keeps the gradient scale independent of ``T``);
    the JS term does not: it compares the plain ``softmax(s)`` and ``softmax(t)`` (``T = 1``), as
    the paper writes ``JS(s, t)`` without one. The teacher is a fixed target: no gradient reaches
    ``teacher_logits``. ``α = 0`` is plain cross-entropy.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weighs the teacher against the labels and must lie in [0, 1], got {alpha}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same (batch, classes) shape"
        )
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    js = js_divergence(student_logits, teacher_logits)
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl + alpha * js
