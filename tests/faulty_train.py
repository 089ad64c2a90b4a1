"""``python -m ezm_gpu.train`` with a fault on rank 1, for ``tests/test_distributed.py`` (run by torchrun in place of
``-m ezm_gpu.train``): once rank 1's learner has made ``EZM_TEST_FAULT_AT`` updates, ``EZM_TEST_FAULT=nan`` makes
its loss NaN (rank 0's stays finite) and ``raise`` makes it raise. Other ranks run the plain application."""
import os
import sys

from ezm_gpu import learner, train

if os.environ.get("RANK") == "1":
    _update = learner.Learner.update

    def _faulty_update(self, replay, generator=None):
        terms = _update(self, replay, generator)
        if self.updates >= int(os.environ["EZM_TEST_FAULT_AT"]):
            if os.environ["EZM_TEST_FAULT"] == "raise":
                raise RuntimeError("injected fault on rank 1")
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    learner.Learner.update = _faulty_update

if __name__ == "__main__":
    train.main(sys.argv[1:])
