from workers.content_key import content_key, normalise_text

DIGEST = "a" * 64


def key(**overrides: object) -> str:
    args: dict[str, object] = dict(text="Hello  world", response=None, image_digests=[DIGEST], model_name="m",
                                   model_version="1", policy_version="p1")
    args.update(overrides)
    return content_key(**args)  # type: ignore[arg-type]


def test_whitespace_and_unicode_forms_do_not_change_the_key() -> None:
    assert key() == key(text=" Hello\n\tworld ") == key(text="Ｈｅｌｌｏ world")
    assert normalise_text("  a \u00a0 b ") == "a b"


def test_case_text_response_images_model_and_policy_each_change_the_key() -> None:
    base = key()
    variants = [
        key(text="hello world"),
        key(response=""),
        key(response="ok"),
        key(image_digests=[]),
        key(image_digests=["b" * 64]),
        key(image_digests=[DIGEST, DIGEST]),
        key(model_name="other"),
        key(model_version="2"),
        key(policy_version="p2"),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_text_and_response_cannot_be_swapped_into_the_same_key() -> None:
    assert key(text="a", response="b") != key(text="b", response="a")
