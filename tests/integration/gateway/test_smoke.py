from __future__ import annotations

from tests.integration.gateway.conftest import World


async def test_a_chat_completion_works_end_to_end(world: World) -> None:
    completion = await world.client.chat.completions.create(
        model=world.model, messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].message.content
    assert completion.model == world.model
