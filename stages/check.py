"""check: validate the whole params.yaml before any other stage runs.

DVC deletes a stage's outputs just before it runs the stage, so a typo found by the train stage itself
would already have cost the old model. Every other stage depends on this stage's output, so DVC runs it
first; a bad value stops `dvc repro` here, with one line naming the key, and every output stays as it
was. The output is constant, so a valid change of params.yaml reruns only this stage and the stages whose
own keys changed.
"""

from _common import Params, run_stage

from mnistgan.io import atomic_path

CONTENT = "params.yaml is valid\n"


def main(params: Params) -> None:
    with atomic_path(params.paths.params_ok) as tmp:
        tmp.write_text(CONTENT)
    print("check: params.yaml is valid")


if __name__ == "__main__":
    run_stage("check", main)
