from gpu_worker.core.detokenizer import StopChecker


class CharDecoder:
    """Token i decodes to chr(i); 0xFFFD stands for half a multibyte character."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def feed(checker, text):
    out, ids = [], []
    for ch in text:
        ids.append(ord(ch))
        delta, hit = checker.update(ids)
        out.append(delta)
        if hit:
            return "".join(out), True
    return "".join(out) + checker.flush(), False


def test_stream_without_stop_strings_releases_everything():
    assert feed(StopChecker(CharDecoder(), []), "hello world") == ("hello world", False)


def test_stop_string_is_cut_and_never_leaked():
    c = StopChecker(CharDecoder(), ["STOP"])
    text, hit = feed(c, "abc STOP def")
    assert hit and text == "abc "


def test_partial_stop_prefix_is_released_when_it_turns_out_not_to_match():
    c = StopChecker(CharDecoder(), ["\n\n"])
    assert feed(c, "a\nb\n") == ("a\nb\n", False)


def test_incomplete_utf8_is_held_back():
    c = StopChecker(CharDecoder(), [])
    assert c.update([ord("a"), 0xFFFD]) == ("a", False)
    assert c.update([ord("a"), ord("é")]) == ("é", False)


def test_stop_strings_before_min_tokens_are_released_and_never_match_later():
    c = StopChecker(CharDecoder(), ["STOP"])
    ids, out = [], []
    for i, ch in enumerate("aSTOPb STOP c"):
        ids.append(ord(ch))
        delta, hit = c.update(ids, check=i >= 5)   # stop strings count from the 6th character
        out.append(delta)
        if hit:
            break
    assert hit and "".join(out) == "aSTOPb "


def test_windowed_decoding_matches_decoding_everything(tiny_assets):
    import random
    from pathlib import Path

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tiny_assets["model"]) / "tokenizer.json"))
    texts = ["héllo 世界 🙂 naïve café\n\n  spaced   out", "def f(x):\n    return x ** 2  # 平方"]
    rng = random.Random(0)
    ids_sets = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    ids_sets.append([rng.randrange(tok.get_vocab_size()) for _ in range(300)])  # any ids at all
    for ids in ids_sets:
        c = StopChecker(tok, [])
        out = "".join(c.update(ids[:i + 1])[0] for i in range(len(ids))) + c.flush()
        assert out == tok.decode(ids, skip_special_tokens=True)
