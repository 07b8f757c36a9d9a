"""The critic: value alignment with the response tokens, zero start, save/load round trip."""
import torch

from rltrain.engine.critic import critic_from_policy, load_critic, save_critic
from rltrain.engine.model import load_model
from rltrain.loops.ppo import critic_values


def _critic(seed=0):
    model, tok = load_model("tiny", seed=seed)
    return critic_from_policy(model), tok


def test_values_start_at_zero_and_have_one_more_position_than_the_response():
    critic, _ = _critic()
    v = critic_values(critic, [[5, 6, 7], [8]], torch.tensor([[10, 11, 12, 13], [14, 15, 0, 0]]), pad_id=0)
    assert v.shape == (2, 5) and v.dtype == torch.float32
    assert torch.equal(v, torch.zeros(2, 5))


def test_value_t_is_the_value_of_prompt_plus_the_first_t_response_tokens():
    """values[i, t] = V(prompt_i + y_i[:t]) whatever the left padding of the batch."""
    critic, _ = _critic()
    torch.nn.init.normal_(critic.value_head.weight)
    critic.eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    resp = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])
    with torch.no_grad():
        v = critic_values(critic, prompts, resp, pad_id=0)  # [2, 5]
        for i in range(2):
            for t in range(5):
                seq = torch.tensor([prompts[i] + resp[i, :t].tolist()])
                alone = critic(seq, torch.ones_like(seq), torch.arange(seq.shape[1])[None], values_to_keep=1)
                assert abs(v[i, t].item() - alone[0, 0].item()) < 1e-4, (i, t)


def test_save_then_load_restores_backbone_and_head(tmp_path):
    critic, _ = _critic(seed=3)
    torch.nn.init.normal_(critic.value_head.weight)
    torch.nn.init.constant_(critic.value_head.bias, 0.5)
    save_critic(critic, tmp_path / "critic")
    again = load_critic(str(tmp_path / "critic"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    args = (ids, torch.ones_like(ids), torch.arange(5)[None])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(*args, values_to_keep=5), critic.eval()(*args, values_to_keep=5))
    other, _ = _critic(seed=4)  # a different backbone gives different values: the test can fail
    torch.nn.init.normal_(other.value_head.weight)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(*args, values_to_keep=5), critic(*args, values_to_keep=5))
