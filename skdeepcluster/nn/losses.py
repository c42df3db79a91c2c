"""Clustering losses as pure functions of tensors.

Conventions: per-head tensors have a leading head axis ``H``; probabilities and log-probabilities
are over the last axis (clusters).
"""

import torch

__all__ = ["pmi", "temi_pair_loss", "instance_weights", "update_cluster_prior"]


def update_cluster_prior(prior, teacher_probs, momentum, *, reduce=None):
    """EMA of the cluster marginal, TEMI Eq. (6): ``q̃ ← m·q̃ + (1−m)·mean_batch q_t``.

    Parameters
    ----------
    prior : Tensor (H, K)
    teacher_probs : Tensor (H, B, K)
        Teacher probabilities of every sample of the step (anchors and neighbours).
    momentum : float
    reduce : callable or None
        Applied to the batch mean (H, K) before the update: in a distributed fit, the mean over
        the ranks' equal shares, which is the mean over the whole batch.
    """
    batch_mean = teacher_probs.mean(dim=1)
    if reduce is not None:
        batch_mean = reduce(batch_mean)
    return momentum * prior + (1.0 - momentum) * batch_mean


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


def temi_pair_loss(student_logits, teacher_logits, log_prior, *, beta, tau, mode="temi",
                   weights=None):
    """Per-head symmetrised (weighted) PMI loss of a batch of pairs, TEMI Eqs. (7)-(10).

    Computed in float32 whatever the dtype of the logits (the loss reductions of a bfloat16
    forward pass stay in float32).

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
        How the instance weights are computed from ``teacher_logits`` when ``weights`` is None.
    weights : Tensor (H, B) or None
        Precomputed instance weights (:func:`instance_weights`). Needed when the H heads are a
        group of a larger ensemble: TEMI's weight is the mean over *all* heads.

    Returns
    -------
    Tensor (H,)
        The loss of each head, ``mean_b w · L``.
    """
    student_x, student_y = (torch.log_softmax(s.float() / tau, dim=-1) for s in student_logits)
    teacher_x, teacher_y = (
        torch.log_softmax(t.detach().float() / tau, dim=-1) for t in teacher_logits
    )
    pair_loss = -0.5 * (
        pmi(student_x, teacher_y, log_prior, beta) + pmi(student_y, teacher_x, log_prior, beta)
    )
    if weights is None:
        weights = instance_weights(teacher_x.exp(), teacher_y.exp(), mode)
    return (weights * pair_loss).mean(dim=1)


# ---------------------------------------------------------------- ADC (Haeusser et al., 2018)
def association_probabilities(a, b):
    """Transition probabilities of learning by association (ADC Eqs. 1-2).

    ``M = a bᵀ``, ``P_ab = softmax_rows(M)``, ``P_ba = softmax_rows(Mᵀ)``, ``P_aba = P_ab P_ba``.

    Parameters
    ----------
    a : Tensor (N_a, D)
        Embeddings of the "labelled" set A (centroids, or augmented copies).
    b : Tensor (N_b, D)
        Embeddings of the "unlabelled" set B (plain images).

    Returns
    -------
    p_ab : Tensor (N_a, N_b)
    p_aba : Tensor (N_a, N_a)
    """
    match = a @ b.t()
    p_ab = torch.softmax(match, dim=1)
    p_ba = torch.softmax(match.t(), dim=1)
    return p_ab, p_ab @ p_ba


def walker_loss(p_aba, labels, eps=1e-8):
    """Cross-entropy between the round-trip probabilities and ``T`` (ADC Eq. 3), mean over rows.

    ``T_ij = 1 / #{k : labels_k = labels_i}`` when ``labels_i = labels_j``, else 0. ``eps`` inside
    the log as in the authors' code (``log(1e-8 + P_aba)``).
    """
    same = (labels.view(-1, 1) == labels.view(1, -1)).to(p_aba.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    return -(target * torch.log(p_aba + eps)).sum(dim=1).mean()


def visit_loss(p_ab, eps=1e-8):
    """Cross-entropy between the uniform distribution over B and the visit probabilities
    ``mean_i P_ab[i, :]``: every member of B should be visited. Minimal (``log N_b``) when all
    are visited equally."""
    visit = p_ab.mean(dim=0)
    return -torch.log(visit + eps).mean()


def association_loss(a, b, labels, visit_weight=0.3):
    """``L_assoc(A, B) = walker + visit_weight · visit`` (Haeusser et al., 2017; ADC Sec. 2.1).

    Parameters
    ----------
    a : Tensor (N_a, D)
        "Labelled" embeddings.
    b : Tensor (N_b, D)
        "Unlabelled" embeddings.
    labels : Tensor (N_a,)
        Integer label of each row of ``a``.
    visit_weight : float

    Returns
    -------
    Tensor (scalar)
    """
    p_ab, p_aba = association_probabilities(a, b)
    return walker_loss(p_aba, labels) + visit_weight * visit_loss(p_ab)


def norm_loss(vectors, target=1.0):
    """ADC's ``L_norm``: ``Σ_i (‖v_i‖ − target)²``, a sum over rows as in the authors' code (which
    is why its weight γ = 1e-5 is small)."""
    return ((vectors.norm(dim=1) - target) ** 2).sum()


def trafo_loss(embeddings, transformed_embeddings, logits, transformed_logits):
    """ADC Eq. (4): ``mean_ij |1 − z_iᵀ z_j − CE(softmax(o_i), o_j)|``.

    The "augmented" batch holds every image once plain and once transformed
    (``[z; z_τ]``, ``2B`` rows); i and j run over all its pairs. ``CE(p_i, o_j) =
    −Σ_k p_ik log softmax(o_j)_k`` is computed per pair (the paper's formula; the authors' code
    averages it over the batch first). Costs a ``(2B, 2B)`` matrix per batch.

    Parameters
    ----------
    embeddings, transformed_embeddings : Tensor (B, D)
    logits, transformed_logits : Tensor (B, K)
    """
    z = torch.cat([embeddings, transformed_embeddings])
    o = torch.cat([logits, transformed_logits])
    cross_entropy = -torch.softmax(o, dim=1) @ torch.log_softmax(o, dim=1).t()
    return (1.0 - z @ z.t() - cross_entropy).abs().mean()


__all__ += [
    "association_probabilities",
    "walker_loss",
    "visit_loss",
    "association_loss",
    "norm_loss",
    "trafo_loss",
]


# ---------------------------------------------------------------- SCAN (Van Gansbeke et al., 2020)
def scan_loss(anchor_logits, neighbor_logits, entropy_weight=5.0, eps=1e-8):
    """SCAN loss of each head, Eq. (2): ``−mean log⟨p_a, p_n⟩ − λ·H(mean_batch p_a)``.

    ``log⟨p_a, p_n⟩`` is computed as a ``logsumexp`` of log-probabilities, so it stays finite
    for one-hot predictions; the entropy of the batch-mean anchor probabilities clamps them at
    ``eps`` (1e-8, as the authors' code).

    Parameters
    ----------
    anchor_logits, neighbor_logits : Tensor (H, B, K) or (B, K)
        Logits of the anchors and of one mined neighbour of each anchor.
    entropy_weight : float
        λ (paper: 5.0; 1.0 to select the best head).

    Returns
    -------
    total, consistency, entropy : Tensors (H,) (or scalars for 2-d input)
    """
    log_anchor = torch.log_softmax(anchor_logits, dim=-1)
    log_neighbor = torch.log_softmax(neighbor_logits, dim=-1)
    consistency = -torch.logsumexp(log_anchor + log_neighbor, dim=-1).mean(dim=-1)
    mean_probs = log_anchor.exp().mean(dim=-2).clamp(min=eps)
    entropy = -(mean_probs * mean_probs.log()).sum(dim=-1)
    return consistency - entropy_weight * entropy, consistency, entropy


def nt_xent_loss(z1, z2, temperature=0.1):
    """NT-Xent (SimCLR) loss of two views: every sample's positive is its other view, the other
    ``2B − 2`` samples of the batch are negatives; mean over the ``2B`` anchors.

    Parameters
    ----------
    z1, z2 : Tensor (B, D)
        L2-normalised projections of the two views (row i of z1 and z2: same image).
    temperature : float
        τ (SCAN's SimCLR: 0.1).

    Returns
    -------
    Tensor (scalar)
    """
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    similarity = (z @ z.t()) / temperature
    similarity = similarity.masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf")
    )
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return torch.nn.functional.cross_entropy(similarity, targets)


def confidence_cross_entropy(weak_logits, strong_logits, threshold=0.99, class_balancing=True):
    """SCAN self-labelling loss (Sec. 2.3): cross-entropy on the strong view of the samples whose
    weak-view prediction is confident (max probability > ``threshold``), with the weak argmax
    as target. With ``class_balancing``, the weight of class c is inversely proportional to its
    count among the confident samples of the batch (authors' ``ConfidenceBasedCE``).

    Parameters
    ----------
    weak_logits : Tensor (B, K)
        Logits of the weak (non-augmented) view; no gradient is taken through them.
    strong_logits : Tensor (B, K)
        Logits of the strongly augmented view.

    Returns
    -------
    loss : Tensor (scalar) or None
        None when no sample of the batch is confident (the caller skips the batch).
    n_confident : int
    """
    max_prob, target = torch.softmax(weak_logits.detach(), dim=-1).max(dim=-1)
    mask = max_prob > threshold
    n_confident = int(mask.sum())
    if n_confident == 0:
        return None, 0
    target = target[mask]
    weight = None
    if class_balancing:
        counts = torch.bincount(target, minlength=weak_logits.shape[-1]).to(strong_logits.dtype)
        weight = torch.where(counts > 0, n_confident / counts.clamp(min=1), torch.ones_like(counts))
    loss = torch.nn.functional.cross_entropy(strong_logits[mask], target, weight=weight)
    return loss, n_confident


__all__ += ["scan_loss", "nt_xent_loss", "confidence_cross_entropy"]
