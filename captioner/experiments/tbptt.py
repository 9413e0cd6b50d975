"""Truncated backpropagation through time for `StackedLSTM`, as the chapter describes it.

A long sequence (B, T, E) is cut into chunks of k steps. Each chunk runs forward from the state the
previous chunk ended in, its loss is backpropagated and the optimizer steps; then `detach_state`
keeps the state's values and drops its graph, so the next chunk starts where this one stopped while
its gradients stop at the chunk boundary (Williams & Peng 1990; Elman 1990's "context" carried on):

    x_1 .. x_k | x_k+1 .. x_2k | ...      forward: state flows across every |
    <- grad -> | <--- grad --> | ...      backward: never across a |

Memory and time per update grow with k, not with T; the price is that no dependency longer than k
steps receives a gradient (the state may still carry it, but nothing is trained to keep it).
Gradient-norm clipping (Pascanu et al. 2013) is applied per chunk and measured, before and after.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from captioner.rnn.cells import State, detach_state
from captioner.rnn.stacked import StackedLSTM

ChunkLoss = Callable[[Tensor, slice], Tensor]  # (output (B, k, D*H), positions of the chunk in T) -> scalar loss


@dataclass(frozen=True)
class ChunkStep:
    """What one optimizer step (one chunk) did."""

    start: int  # first time step of the chunk
    length: int  # its number of time steps (the last chunk may be shorter than k)
    loss: float  # the chunk's loss before the step
    norm_before: float  # global gradient norm before clipping
    norm_after: float  # global gradient norm the optimizer used (after clipping)
    clipped: bool  # whether clipping scaled the gradient down


def train_truncated(model: StackedLSTM, sequence: Tensor, k: int, loss_of: ChunkLoss,
                    optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                    state: Optional[State] = None) -> tuple[list[ChunkStep], State]:
    """One pass of truncated BPTT over `sequence` (B, T, E) in chunks of `k` steps.

    `loss_of(output, positions)` turns a chunk's output (B, length, D*H) into a scalar loss; `positions`
    is the chunk's slice of the T axis (for targets). Every parameter the optimizer holds is clipped to a
    global norm of `grad_clip` (0 = no clipping). Returns one `ChunkStep` per chunk and the final state,
    already detached, so a following call continues the same stream.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"train_truncated: k (chunk length) must be a positive int, got {k!r}")
    if sequence.dim() != 3:
        raise ValueError(f"train_truncated: sequence must be (B, T, E), got shape {tuple(sequence.shape)}")
    if grad_clip < 0:
        raise ValueError(f"train_truncated: grad_clip must be >= 0 (0 = off), got {grad_clip!r}")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    steps: list[ChunkStep] = []
    for start in range(0, sequence.shape[1], k):
        chunk = sequence[:, start : start + k]  # (B, k, E), the last one possibly shorter
        output, state = model(chunk, state)  # (B, k, D*H); state continues from the previous chunk
        loss = loss_of(output, slice(start, start + chunk.shape[1]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm_before, norm_after = clip_gradients(parameters, grad_clip)
        optimizer.step()
        state = detach_state(state)  # carry the values into the next chunk, not the graph
        clipped = 0 < grad_clip < norm_before
        steps.append(ChunkStep(start, chunk.shape[1], loss.item(), norm_before, norm_after, clipped))
    return steps, state


def clip_gradients(parameters: list[Tensor], grad_clip: float) -> tuple[float, float]:
    """Scale gradients to a global norm of at most `grad_clip` (0 = off) -> (norm before, norm after)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return 0.0, 0.0
    norm = torch.nn.utils.get_total_norm(gradients).item()  # ‖g‖ = sqrt(Σ ‖g_p‖²)
    if grad_clip <= 0 or norm <= grad_clip:
        return norm, norm
    torch.nn.utils.clip_grads_with_norm_(parameters, grad_clip, torch.tensor(norm))  # g ← g · c / ‖g‖
    return norm, torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]).item()
