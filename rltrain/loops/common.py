"""Compatibility names for code written against the old ``loops.common`` grab-bag (tests/engine);
new code imports the module that owns each name: ``loops.setup`` (building things),
``loops.episodes`` (rollout + reward), ``loops.lifecycle`` (lifecycle), ``rollout.forward`` (the forward)."""
from rltrain.config import option_kwargs  # noqa: F401
from rltrain.loops.episodes import (PromptOrder, Scored, rank_slice, reward_metrics,  # noqa: F401
                                   rollout_and_score, rollout_generator, step_generator)
from rltrain.loops.lifecycle import (Metrics, StepClock, chunks, end_step, entropy_stats, evaluate, final_eval,  # noqa: F401
                               TrainState, finite_or_raise, global_count, initial_eval, policy_eval, resume,
                               resume_dir, save, should_save)
from rltrain.loops.setup import (build_actor, build_data, build_reference, build_reward_fn,  # noqa: F401
                                 encode_prompts, load_policy_model, shard_judge)
from rltrain.rollout.forward import batched_logprobs, pack, response_logits, response_logprobs  # noqa: F401
