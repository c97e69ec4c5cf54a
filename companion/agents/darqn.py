"""DARQN: the Deep Attention Recurrent Q-Network (Sorokin et al. 2015, arXiv 1512.01693), book chapter 6.

DRQN with attention between the CNN and the LSTM. At each step:

1. A CNN turns the frame into ``L`` location vectors ``v_i`` (7x7x256 on Atari: ``L = 49``, ``D = 256``).
2. Attention weights come from the previous LSTM state, by additive attention (chapter 1)::

       g_i = softmax_i( w^T tanh(W_v v_i + W_h h_{t-1}) )

3. **Soft** attention feeds the LSTM the expectation ``z_t = sum_i g_i v_i``. **Hard** attention samples one
   location ``i_t ~ Categorical(g)`` and feeds ``z_t = v_{i_t}``; as in the original code, each training
   example uses the soft weights instead with probability ``hard_soft_mix`` (0.5).
4. ``h_t, c_t = LSTM(z_t, (h_{t-1}, c_{t-1}))`` and ``Q(s_t, .) = W_q h_t + b``. The same ``h_t`` drives the
   next step's attention. The state is reset at episode starts; the TD loss applies at every unrolled step.

Hard attention cannot be trained by backpropagation through the sample. It uses REINFORCE (Williams 1992):
the gradient of ``E[R]`` is ``E[(R - b) grad log g_{i_t}]``. Following the original code (its
``CMulTableHard`` and baseline layer), with ``hard_gradients="original"`` (the default):

- the "return" ``R`` is the step's Q-learning target ``y_t``, and the REINFORCE term, scaled by
  ``reinforce_scale`` (0.1), is applied to the examples that sampled;
- the attention weights receive **no** gradient from the TD loss: not through the sample (it has none),
  and not through the examples that read the soft weights either (the original passes them a gradient
  that is constant across locations, which the softmax cancels: here their weights are detached);
- the baseline ``b_t = w_b^T h_t + c`` is fitted to ``y_t`` by squared error, and only the baseline layer
  learns from that fit (``h_t`` is detached): the LSTM, attention and CNN learn from the TD loss and the
  REINFORCE term alone;
- nothing the attention receives flows back into the recurrent state: its query ``h_{t-1}`` is detached
  (the original drops the attention's gradient with respect to ``h_{t-1}``), so REINFORCE trains the
  attention and, through the location vectors, the CNN, but not the LSTM.

``hard_gradients="end_to_end"`` keeps this module's first version, which differs on the last three points.
Three differences from the original remain, by choice: REINFORCE's sign is the textbook one (the original's
REINFORCE layer returns a gradient for a descent step while its learner ascends, so as we read it the
attention there moves against the REINFORCE direction); the losses are averaged over the batch and the
unroll where the original sums the TD gradient; and Sorokin et al.'s hard runs started from a CNN
pretrained on Seaquest, while here every network starts from scratch. Soft attention backpropagates the
TD loss through the attention into ``h_{t-1}``, which the original code does not.

Learning uses :class:`~companion.buffers.SequenceReplayBuffer` windows from a zero state, like DRQN. The
recurrent core is an ``nn.LSTMCell`` stepped over ``unbind(1)`` of the precomputed CNN features.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.agents.base import QAgent, QLearningConfig, sequence_td, sequence_tensors
from companion.attention import AdditiveAttention
from companion.buffers import SequenceBatch
from companion.networks import LocationCNN

__all__ = ["DARQN", "DARQNConfig", "DARQNNetwork", "LocationCNN"]

LSTMState = tuple[Tensor, Tensor]


@dataclasses.dataclass
class DARQNConfig(QLearningConfig):
    """DARQN settings. :meth:`DARQN.preset` gives ``atari_paper`` (Sorokin et al.) and a MinAtar size."""

    attention: str = "soft"  # "soft" or "hard"
    lstm_size: int = 256
    attention_hidden: int = 256
    seq_len: int = 4  # unroll length
    burn_in: int = 0
    hard_soft_mix: float = 0.5  # hard attention: probability that a training example uses the soft weights
    reinforce_scale: float = 0.1  # hard attention: scale of the REINFORCE term (the original divides by 10)
    hard_gradients: str = "original"  # or "end_to_end": see the module's docstring

    def validate(self) -> None:
        super().validate()
        if self.attention not in ("soft", "hard"):
            raise ValueError(f"attention must be 'soft' or 'hard', got {self.attention!r}")
        if self.hard_gradients not in ("original", "end_to_end"):
            raise ValueError(f"hard_gradients must be 'original' or 'end_to_end', got {self.hard_gradients!r}")


class DARQNNetwork(nn.Module):
    """CNN locations -> attention from ``h_{t-1}`` -> LSTM -> Q, unrolled over a sequence."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: DARQNConfig) -> None:
        super().__init__()
        self.config = config
        self.cnn = LocationCNN(obs_shape)
        self.attention = AdditiveAttention(config.lstm_size, self.cnn.dim, config.attention_hidden)
        self.lstm = nn.LSTMCell(self.cnn.dim, config.lstm_size)
        self.head = nn.Linear(config.lstm_size, n_actions)
        self.baseline = nn.Linear(config.lstm_size, 1) if config.attention == "hard" else None

    def forward(self, obs: Tensor, state: LSTMState | None = None,
                sample: bool = False) -> tuple[Tensor, LSTMState, dict[str, Tensor]]:
        """Unroll over ``obs`` ``(B, T, C, H, W)`` from ``state`` (zeros if ``None``).

        Args:
            sample: hard attention samples a location (else it reads the soft expectation); during
                training, each example uses the soft weights instead with probability ``hard_soft_mix``.

        Returns:
            Q-values ``(B, T, A)``, the final state, and per step: ``weights`` ``(B, T, L)``, and for hard
            attention ``log_prob`` of the sampled location, ``sampled`` (which examples sampled), ``baseline``,
            each ``(B, T)``.
        """
        batch, steps = obs.shape[:2]
        locations = self.cnn(obs.flatten(0, 1)).view(batch, steps, self.cnn.num_locations, -1)  # (B, T, L, D)
        if state is None:
            zeros = locations.new_zeros(batch, self.config.lstm_size)
            state = (zeros, zeros)
        h, c = state
        hard = self.config.attention == "hard"
        original = self.config.hard_gradients == "original"
        outputs: dict[str, list[Tensor]] = {"q": [], "weights": [], "log_prob": [], "sampled": [], "baseline": []}
        for v in locations.unbind(1):  # v: (B, L, D)
            query = h.detach() if hard and original else h  # the original passes nothing back into h_{t-1}
            weights = torch.softmax(self.attention.scores(query[:, None, :], v)[:, 0], dim=-1)  # (B, L)
            if hard and sample:
                index = torch.multinomial(weights, 1)  # (B, 1)
                chosen = F.one_hot(index[:, 0], weights.shape[-1]).to(weights.dtype)  # (B, L)
                if self.training:
                    sampled = torch.rand(batch, device=obs.device) >= self.config.hard_soft_mix  # (B,)
                else:
                    sampled = torch.ones(batch, dtype=torch.bool, device=obs.device)
                soft = weights.detach() if original else weights  # the original: no TD gradient into g
                read = torch.where(sampled[:, None], chosen, soft)  # (B, L)
                outputs["log_prob"].append(torch.log(weights.gather(1, index)[:, 0].clamp_min(1e-12)))
                outputs["sampled"].append(sampled)
            else:
                read = weights
            z = torch.bmm(read[:, None, :], v)[:, 0]  # (B, D)
            h, c = self.lstm(z, (h, c))
            outputs["q"].append(self.head(h))
            outputs["weights"].append(weights)
            if self.baseline is not None:
                outputs["baseline"].append(self.baseline(h.detach() if original else h)[:, 0])
        extras = {k: torch.stack(v, 1) for k, v in outputs.items() if v and k != "q"}
        return torch.stack(outputs["q"], 1), (h, c), extras


class DARQN(QAgent):
    """Deep attention recurrent Q-learning, soft or hard, on sequence replay."""

    Config = DARQNConfig
    recurrent = True
    sequence_replay = True

    @classmethod
    def preset(cls, family: str) -> DARQNConfig:
        if family == "ALE":
            return cls.atari_paper()
        if family == "MinAtar":
            return DARQNConfig(lr=2.5e-4, batch_size=32, buffer_size=100_000, learning_starts=5_000, train_freq=4,
                               gradient_steps=1, target_update=1_000, eps_start=1.0, eps_end=0.1, eps_fraction=0.1,
                               lstm_size=128, attention_hidden=128, seq_len=8)
        raise ValueError(f"no DARQN preset for env family {family!r}: DARQN attends over image locations")

    @staticmethod
    def atari_paper(attention: str = "soft") -> DARQNConfig:
        """Sorokin et al. 2015 and their code: single frames, LSTM 256, unroll 4, centred RMSProp as the Lua
        code computes it (:class:`~companion.agents.base.DQNRMSprop`: 0.95, 0.01 inside the square root)
        with the learning rate annealed linearly over 1M steps from 0.01 (soft) or 0.001 (hard) to 0.00025,
        rewards clipped to [-1, 1], TD error clipped at 1 (Huber), gradients clamped to +-5, epsilon
        1 -> 0.1 over 1M of the 5M steps, both schedules counted from the start of learning; replay 500k,
        learning from 25k, an update every 4 steps, the target every 10k; the deterministic ALE (no sticky
        actions) with up to 30 no-op starts. Not reproduced: the hard variant's CNN pretrained on Seaquest, and the
        scale of the update (the Lua code sums the TD gradient over the batch and the unroll, the companion
        averages it; with eps inside the root, RMSProp's step depends on that scale)."""
        return DARQNConfig(attention=attention, frame_stack=1, lstm_size=256, attention_hidden=256, seq_len=4,
                           batch_size=32, buffer_size=500_000, learning_starts=25_000, train_freq=4,
                           gradient_steps=1, target_update=10_000, gamma=0.99, reward_clip=1.0, loss="huber",
                           grad_clamp=5.0, max_grad_norm=0.0, optimizer="rmsprop_dqn",
                           lr=0.01 if attention == "soft" else 0.001, lr_end=0.00025, lr_decay_steps=1_000_000,
                           eps_start=1.0, eps_end=0.1, eps_fraction=0.2, eval_epsilon=0.05, double_dqn=False,
                           anneal_after_learning_starts=True, sticky_actions=0.0)

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: DARQNConfig, device: torch.device) -> None:
        config.validate()
        super().__init__(obs_shape, n_actions, config, device, DARQNNetwork(tuple(obs_shape), n_actions, config))

    def act(self, obs: np.ndarray, state: LSTMState | None, epsilon: float,
            rng: np.random.Generator) -> tuple[int, LSTMState]:
        action, state, _ = self.act_with_attention(obs, state, epsilon, rng)
        return action, state

    def act_with_attention(self, obs: np.ndarray, state: LSTMState | None, epsilon: float,
                           rng: np.random.Generator) -> tuple[int, LSTMState, np.ndarray]:
        """:meth:`act`, also returning the attention weights ``(L,)`` it used at this step (for hard
        attention: the distribution the location was sampled from)."""
        with self.inference():
            q, state, extras = self.q(torch.as_tensor(obs, device=self.device)[None, None], state, sample=True)
        weights = extras["weights"][0, 0].cpu().numpy()
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions)), state, weights
        return int(q[0, 0].argmax()), state, weights

    def attention_map(self, obs_seq: np.ndarray) -> np.ndarray:
        """Attention weights ``(T, L)`` over one episode's observations ``(T, C, H, W)``, from a zero state."""
        with self.inference():
            _, _, extras = self.q(torch.as_tensor(obs_seq, device=self.device)[None], sample=False)
        return extras["weights"][0].cpu().numpy()

    def loss(self, batch: SequenceBatch) -> tuple[Tensor, dict[str, float]]:
        """TD loss at every unmasked step; with hard attention, plus REINFORCE and the baseline's fit."""
        c = self.config
        seq = sequence_tensors(batch, c, self.device, c.burn_in)
        q_all, _, extras = self.q_fn(seq.inputs, sample=True)  # (B, T+1, A)
        with torch.no_grad():
            next_q = self.target_fn(seq.inputs, sample=True)[0][:, 1:]  # (B, T, A)
        loss, target, q_taken = sequence_td(q_all[:, :-1], q_all[:, 1:], next_q, seq, c)
        info = {"q": seq.masked_mean(q_taken.detach()).item()}
        entropy = -(extras["weights"] * extras["weights"].clamp_min(1e-12).log()).sum(-1)[:, :-1]  # (B, T)
        info["attention_entropy"] = seq.masked_mean(entropy).item()
        if c.attention == "hard":
            baseline = extras["baseline"][:, :-1]  # (B, T): b_t from h_t
            advantage = (target - baseline).detach()
            sampled = extras["sampled"][:, :-1].float() * seq.weights
            reinforce = -(advantage * extras["log_prob"][:, :-1] * sampled).sum() / sampled.sum().clamp(min=1.0)
            baseline_loss = seq.masked_mean((target - baseline) ** 2)
            loss = loss + c.reinforce_scale * reinforce + baseline_loss
            info.update(reinforce=reinforce.item(), baseline_loss=baseline_loss.item())
        return loss, info

    @staticmethod
    def max_entropy(num_locations: int) -> float:
        """The entropy of uniform attention over ``num_locations``, for scaling entropy plots."""
        return math.log(num_locations)

    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameters of the CNN, attention, LSTM, Q head and (hard) baseline."""
        net = self.q
        parts = {"cnn": net.cnn, "attention": net.attention, "lstm": net.lstm, "output": net.head}
        if net.baseline is not None:
            parts["baseline"] = net.baseline
        return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
