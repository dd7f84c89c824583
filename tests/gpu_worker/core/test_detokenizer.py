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
