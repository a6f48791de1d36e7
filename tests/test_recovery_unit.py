"""Focused tests of jobmanager.recovery's reading of what a target lists
while a search looks for the job an interrupted submit made (the
integration tests search real targets: test_recovery.py).  A target may
send anything: the answers are handed in by hand."""

import errno
import json

from unit import needs_flux

pytestmark = needs_flux


class Answer:
    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def get(self):
        if self.error is not None:
            raise self.error
        return self.value

    def reset(self):
        pass


class Search:
    """What Recovery.on_list uses of its search."""

    def __init__(self):
        self.found_jobs = []
        self.first = True
        self.retried = []
        self.checked = 0

    def retry(self, message):
        self.retried.append(message)

    def arm(self):
        pass

    def check_candidates(self):
        self.checked += 1


def on_list(search, answer):
    from flux_delegate.jobmanager.recovery import Recovery

    Recovery.on_list(search, answer)


def test_listed_jobs_keep_their_id_and_submit_time_only():
    from flux_delegate.jobmanager.recovery import listed

    assert listed({"id": 5, "t_submit": 3.5, "name": "x" * 1000}) == (5, 3.5)
    assert listed({"id": 9}) == (9, 0.0)
    assert listed({"id": 7, "t_submit": "nan"}) == (7, 0.0)
    for odd in ({"id": "5"}, {"id": True}, {"id": -1}, {"x": 1}, 5, None, "%n", {"id": 7, "t_submit": [1]}):
        assert listed(odd) is None, odd


def test_answers_not_understood_search_again_with_the_reason():
    for answer in (
        Answer(error=json.JSONDecodeError("Expecting value", "%n", 0)),
        Answer(["a", "list"]),
        Answer({"jobs": "many"}),
    ):
        search = Search()
        on_list(search, answer)
        assert search.retried == ["listing its jobs: an answer not understood"]
        assert search.found_jobs == []


def test_what_is_not_a_job_is_left_out_and_the_listing_is_bounded(monkeypatch):
    from flux_delegate.jobmanager import recovery

    search = Search()
    on_list(search, Answer({"version": 1, "jobs": [{"id": 3, "t_submit": 1.0}, {"id": "x"}, 7]}))
    assert search.found_jobs == [(3, 1.0)] and search.retried == []
    on_list(search, Answer(error=OSError(errno.ENODATA, "end")))
    assert search.checked == 1
    monkeypatch.setattr(recovery, "MAX_LISTED", 2)
    search = Search()
    on_list(search, Answer({"version": 1, "jobs": [{"id": i} for i in range(3)]}))
    assert search.retried == ["listing its jobs: more than 2 since the submit"]
