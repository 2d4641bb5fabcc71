"""rundir.py: the files of a run directory."""

import glob
import json

import rundir


def test_write_results_keeps_what_it_does_not_recompute_and_says_what_changed(tmp_path):
  first = {'eval/label_top_1_accuracy': 0.5, 'linear_eval/top_1_accuracy': 0.3, 'global_step': 4}
  assert rundir.write_results(str(tmp_path), first, 4) == []
  events = glob.glob(str(tmp_path / 'eval' / 'events.out.tfevents.*'))
  assert len(events) == 1
  again = {'eval/label_top_1_accuracy': 0.5, 'global_step': 4}  # an evaluation without the linear evaluation
  assert rundir.write_results(str(tmp_path), again, 4) == []
  assert json.load(open(tmp_path / 'result_4.json')) == first  # nothing lost, nothing written
  assert glob.glob(str(tmp_path / 'eval' / 'events.out.tfevents.*')) == events
  second = {'eval/label_top_1_accuracy': 0.6, 'global_step': 4}
  assert rundir.write_results(str(tmp_path), second, 4) == ['eval/label_top_1_accuracy']
  for name in ('result.json', 'result_4.json'):
    assert json.load(open(tmp_path / name)) == {**first, **second}
