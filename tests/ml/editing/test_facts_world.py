"""The fictional-facts world: deterministic, held-out people really held out, edits that change
their two-hop answers."""

from __future__ import annotations

from ml.data.facts_world import (
    TEMPLATES,
    build_world,
    edit_requests,
    entity_documents,
    known_fact_pairs,
    training_sentences,
)


def test_same_seed_same_world_other_seed_other_names() -> None:
    assert build_world(3) == build_world(3)
    assert set(build_world(3).people).isdisjoint(build_world(4).people)


def test_unseen_people_are_absent_from_training_text() -> None:
    world = build_world(0)
    text = "\n".join(training_sentences(world))
    assert world.unseen_people and world.known_people
    assert all(person not in text for person in world.unseen_people)
    assert all(person in text for person in world.known_people)
    # every template of every known fact is there
    assert len(training_sentences(world)) == (
        3 * (len(world.cities) + len(world.companies)) + 3 * 2 * len(world.known_people)
        + 2 * len(world.known_people)
    )  # fmt: skip


def test_edit_requests_move_people_to_another_country() -> None:
    world = build_world(0)
    records = edit_requests(world, 30, seed=2)
    assert len({r["subject"] for r in records}) == 30
    for record in records:
        person = record["subject"]
        old_city, new_city = world.person_city[person], record["target_new"].strip()
        assert record["ground_truth"].strip() == old_city
        assert world.city_country[new_city] != world.city_country[old_city]
        assert all(
            q["answer"].strip() == world.city_country[new_city] for q in record["portability"]
        )
        assert len(record["rephrase_prompts"]) == len(TEMPLATES["born_in"]) - 1
        edited = {r["subject"] for r in records}
        assert not any(p in q["prompt"] for q in record["locality"] for p in edited)
        assert person in world.known_people


def test_known_pairs_and_documents() -> None:
    world = build_world(0)
    pairs = known_fact_pairs(world)
    assert ("Vaedrou is a city in", " " + world.city_country["Vaedrou"]) in pairs
    documents = entity_documents(world, world.unseen_people[:2])
    assert [d["subject"] for d in documents] == world.unseen_people[:2]
    person = world.unseen_people[0]
    assert world.person_city[person] in documents[0]["text"]
    assert world.person_company[person] in documents[0]["text"]
