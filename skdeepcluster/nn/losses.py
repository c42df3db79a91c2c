"""Clustering losses as pure functions of tensors.

Conventions: per-head tensors have a leading head axis ``H``; probabilities and log-probabilities
are over the last axis (clusters).
"""

import torch

__all__ = ["pmi", "temi_pair_loss", "instance_weights", "update_cluster_prior"]


def update_cluster_prior(prior, teacher_probs, momentum):
    """EMA of the cluster marginal, TEMI Eq. (6): ``q̃ ← m·q̃ + (1−m)·mean_batch q_t``.

    Parameters
    ----------
    prior : Tensor (H, K)
    teacher_probs : Tensor (H, B, K)
        Teacher probabilities of every sample of the step (anchors and neighbours).
    momentum : float
    """
    return momentum * prior + (1.0 - momentum) * teacher_probs.mean(dim=1)


def pmi(student_log_probs, teacher_log_probs, log_prior, beta):
    """TEMI Eq. (8): ``log Σ_c (q_s(c|x) q_t(c|x'))^β / q̃(c)``, computed in log space.

    Parameters
    ----------
    student_log_probs : Tensor (H, B, K)
        ``log q_s(c|x)``.
    teacher_log_probs : Tensor (H, B, K)
        ``log q_t(c|x')`` of the paired samples.
    log_prior : Tensor (H, K)
        ``log q̃_t(c)``.
    beta : float

    Returns
    -------
    Tensor (H, B)
    """
    return torch.logsumexp(
        beta * (student_log_probs + teacher_log_probs) - log_prior.unsqueeze(1), dim=-1
    )


def instance_weights(teacher_probs_x, teacher_probs_y, mode):
    """Teacher-guided instance weights (TEMI Eqs. 9-10), detached, shape (H, B).

    ``mode="temi"``: ``w(x, x') = mean_j Σ_c q_t^j(c|x) q_t^j(c|x')`` (the ensemble of heads);
    ``"wpmi"``: each head's own weight; ``"pmi"``: all ones.
    """
    if mode == "pmi":
        return torch.ones(teacher_probs_x.shape[:2], device=teacher_probs_x.device)
    weights = (teacher_probs_x * teacher_probs_y).sum(dim=-1).detach()
    if mode == "wpmi":
        return weights
    if mode == "temi":
        return weights.mean(dim=0, keepdim=True).expand_as(weights)
    raise ValueError(f"mode must be 'temi', 'wpmi' or 'pmi', got {mode!r}.")


def temi_pair_loss(student_logits, teacher_logits, log_prior, *, beta, tau, mode="temi"):
    """Per-head symmetrised (weighted) PMI loss of a batch of pairs, TEMI Eqs. (7)-(10).

    Parameters
    ----------
    student_logits : tuple of two Tensors (H, B, K)
        Student logits of the anchors x and of their neighbours x'.
    teacher_logits : tuple of two Tensors (H, B, K)
        Teacher logits of x and x' (no gradient is taken through them).
    log_prior : Tensor (H, K)
        Log of the cluster prior, already updated with this batch.
    beta, tau : float
        PMI exponent and softmax temperature.
    mode : {"temi", "wpmi", "pmi"}

    Returns
    -------
    Tensor (H,)
        The loss of each head, ``mean_b w · L``.
    """
    student_x, student_y = (torch.log_softmax(s / tau, dim=-1) for s in student_logits)
    teacher_x, teacher_y = (torch.log_softmax(t.detach() / tau, dim=-1) for t in teacher_logits)
    pair_loss = -0.5 * (
        pmi(student_x, teacher_y, log_prior, beta) + pmi(student_y, teacher_x, log_prior, beta)
    )
    weights = instance_weights(teacher_x.exp(), teacher_y.exp(), mode)
    return (weights * pair_loss).mean(dim=1)
