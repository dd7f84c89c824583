from scheduler_svc.core.lifecycle import RequestBook
from scheduler_svc.core.policies import make_policy
from scheduler_svc.core.types import AdmissionPolicy, PendingRequest, WorkerView


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def view(wid="w0", total=1000):
    return WorkerView(wid, total_tokens=total, free_tokens=0)


def req(rid, inp=10, out=10, arrival=0.0, adapter="a"):
    return PendingRequest(rid, adapter, inp, out, adapter_bytes=100, adapter_rank=8, arrival=arrival)


def test_admission_reserves_and_release_frees_the_worker():
    clock = Clock()
    book = RequestBook(make_policy("fifo", clock), clock)
    book.add(req("r1", 100, 100))
    book.add(req("r2", 900, 100))
    rnd = book.schedule(book.views_for([view()]))
    assert [a.request.request_id for a in rnd.admit] == ["r1"]      # r2 does not fit next to r1
    assert book.reserved("w0") == {"r1": 200} and book.running() == 1
    assert book.release("r1", cancel=False) is None
    assert [a.request.request_id for a in book.schedule(book.views_for([view()])).admit] == ["r2"]
    assert book.completed_count == 1


def test_a_rerun_replays_its_prefix_without_duplicating_tokens():
    clock = Clock()
    book = RequestBook(make_policy("fifo", clock), clock)
    book.add(req("r1"))
    book.schedule(book.views_for([view("w0"), view("w1")]))
    wid = book.get("r1").worker
    assert [book.tokens("r1", wid, 1) for _ in range(3)] == [1, 1, 1]
    assert book.worker_down(wid) == ["r1"]
    assert book.tokens("r1", wid, 1) == 0                     # the lost worker's late token
    other = "w1" if wid == "w0" else "w0"
    book.schedule(book.views_for([view(other)]))
    assert book.get("r1").worker == other and book.get("r1").pending.attempts == 1
    assert [book.tokens("r1", other, 1) for _ in range(5)] == [0, 0, 0, 1, 1]
    assert book.get("r1").sent_tokens == 5
    assert not book.completed("r1", wid) and book.completed("r1", other)


def test_cancel_of_a_queued_request_leaves_the_policy_and_of_a_running_one_names_its_worker():
    clock = Clock()
    policy = make_policy("fifo", clock)
    book = RequestBook(policy, clock)
    book.add(req("r1", 600, 300))
    book.add(req("r2", 600, 300))
    book.schedule(book.views_for([view()]))
    assert policy.queued() == 1
    assert book.release("r2", cancel=True) is None and policy.queued() == 0
    assert book.release("r1", cancel=True) == "w0" and book.reserved("w0") == {}
    assert book.completed_count == 0


def test_squashed_requests_are_requeued_and_cancelled_on_their_worker():
    clock = Clock()

    class Squasher(AdmissionPolicy):
        name = "squasher"

        def __init__(self):
            self.fifo = make_policy("fifo", clock)
            self.pending_squash = []

        def enqueue(self, r): self.fifo.enqueue(r)
        def requeue(self, r): self.fifo.requeue(r)
        def cancel(self, rid): return self.fifo.cancel(rid)
        def queued(self): return self.fifo.queued()
        def schedule(self, views): return self.fifo.schedule(views)
        def squashes(self):
            out, self.pending_squash = self.pending_squash, []
            return out

    p = Squasher()
    book = RequestBook(p, clock)
    book.add(req("r1"))
    book.schedule(book.views_for([view()]))
    p.pending_squash = ["r1"]
    book.add(req("r2"))
    rnd = book.schedule(book.views_for([view()]))
    assert ("r1", "w0") in rnd.cancel
    assert book.get("r1").worker is None and p.queued() == 1


def test_the_base_class_gives_every_optional_method_a_default():
    clock = Clock()
    for name in ("fifo", "sjf", "static-mlq", "chameleon"):
        p = make_policy(name, clock)
        assert isinstance(p, AdmissionPolicy)
        assert p.squashes() == [] and isinstance(p.metrics(), dict)
        p.enqueue(req("x", adapter="ad-1"))
        p.schedule([WorkerView("w0", total_tokens=10, free_tokens=10)])   # too small: stays queued
        assert p.prefetch_hints("w0") == ["ad-1"], name


def test_the_admission_window_holds_requests_in_the_scheduler_until_one_starts():
    for name in ("fifo", "chameleon"):
        clock = Clock()
        book = RequestBook(make_policy(name, clock), clock)
        for i in range(6):
            book.add(req(f"r{i}", arrival=0.0))

        def admit(window):
            views = book.window_for(book.views_for([view(total=10_000)]), window)
            return [a.request.request_id for a in book.schedule(views).admit]

        first = admit(2)
        assert len(first) == 2, name                        # two not started: the window is full
        assert admit(2) == [], name
        assert book.tokens(first[0], "w0", 1) == 1          # one of them streams its first token
        assert len(admit(2)) == 1, name                     # ... which opens one place
        assert len(admit(0)) == 3, name                     # no window: memory alone decides
