"""Agents, one file per algorithm family, and the registry the CLI and the loop read.

Add an algorithm: write ``companion/agents/<name>.py`` with an :class:`~companion.agents.base.Agent`
subclass, then add a line to :data:`AGENTS`.
"""

from __future__ import annotations

from companion.agents.actor_critic import ActorCriticAgent, ActorCriticConfig
from companion.agents.base import Agent, QAgent, QLearningConfig
from companion.agents.darqn import DARQN, DARQNConfig
from companion.agents.dqn import DQN, DQNConfig
from companion.agents.drqn import DRQN, DRQNConfig
from companion.agents.nec import NEC, NECConfig
from companion.agents.ppo import (
    A2C,
    PPO,
    PPOLSTM,
    PPOAttention,
    PPOAttentionConfig,
    PPOConfig,
    PPOHierarchicalMemory,
    PPOHierarchicalMemoryConfig,
    PPOLSTMConfig,
    PPOMemory,
    PPOMemoryConfig,
)
from companion.agents.sadqn import SADQN, EntitySADQN, SADQNConfig

#: name used on the command line -> agent class
AGENTS: dict[str, type[Agent]] = {"dqn": DQN, "drqn": DRQN, "darqn": DARQN, "sadqn": SADQN,
                                  "sadqn-entity": EntitySADQN, "ppo": PPO, "a2c": A2C, "ppo-lstm": PPOLSTM,
                                  "ppo-attn": PPOAttention, "ppo-memory": PPOMemory,
                                  "ppo-hmemory": PPOHierarchicalMemory, "nec": NEC}

__all__ = ["A2C", "AGENTS", "DARQN", "DQN", "DRQN", "NEC", "PPO", "PPOLSTM", "SADQN", "ActorCriticAgent",
           "ActorCriticConfig", "Agent", "DARQNConfig", "DQNConfig", "DRQNConfig", "EntitySADQN", "NECConfig",
           "PPOAttention", "PPOAttentionConfig", "PPOConfig", "PPOHierarchicalMemory",
           "PPOHierarchicalMemoryConfig", "PPOLSTMConfig", "PPOMemory", "PPOMemoryConfig", "QAgent",
           "QLearningConfig", "SADQNConfig"]
