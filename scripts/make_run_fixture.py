"""Write a tiny interrupted training run for the cross-major resume test.

    python scripts/make_run_fixture.py tests/fixtures/run_transformers4   # under transformers 4.x
    python scripts/make_run_fixture.py tests/fixtures/run_transformers5   # under transformers 5.x

Two steps of ``RUN_FIXTURE`` (the standard library's sources, a local tokenizer of 300 ids,
a one-layer XLNet), one checkpoint kept; ``tests/test_train_resume.py`` resumes each run to
step 4 under whichever transformers major is installed.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from asarm.train import TrainConfig, train

RUN_FIXTURE = dict(dataset="stdlib", eval_docs=2, seq_len=16, init="fresh", tokenizer="local",
                   local_vocab_size=300, model_config=dict(d_model=16, n_layer=1, n_head=2, d_inner=32),
                   rate_warmup_steps=2, batch_size=2, grad_accum=1, lr=1e-3, scale_lr=False,
                   warmup_steps=1, max_steps=2, cpu=True, save_steps=1, keep_last=1, log_steps=1,
                   eval_steps=0, eval_rates=[0.5], eval_batches=1, sample_rows=1, progress=False)


def main(out: str) -> None:
    torch.set_num_threads(1)
    run = Path(tempfile.mkdtemp()) / "run"
    train(TrainConfig.from_dict({**RUN_FIXTURE, "output_dir": str(run)}))
    for folder in ("model", "tokenizer"):  # the checkpoint is what a resume reads
        shutil.rmtree(run / folder, ignore_errors=True)
    shutil.copytree(run, out, dirs_exist_ok=False)


if __name__ == "__main__":
    main(sys.argv[1])
