"""Task workflows built on the models, the one Trainer and the one decoding path.

- classify: labelled texts -> a prepared directory -> a classifier trained by lmlab.train.train -> eval / predict
  (labeled: reading TSV / CSV / one-file-per-label data; classifier_init: the model a run starts from).
- pairs: parallel or monolingual text -> a prepared directory of pairs -> seq2seq batches; translate: decoding.
- batching: what they share (length-bucketed batch orders, right padding, ragged rows on disk).
"""
