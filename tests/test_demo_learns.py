"""The demo recipe learns something real: a short run of it already fills top-level domains.

Trains the `demo` preset for 3 epochs (about a minute on 2 cores) and asks for every character of
the TLD of held-out domains, one `?` at a time."""
import numpy as np
import pytest
from domain_canine.config import resolve_config
from domain_canine.training import train
from domain_canine.data import load_corpus
from domain_canine.inference import Predictor

@pytest.fixture(scope='module')
def demo_model(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    return train(resolve_config('demo', epochs=3, output_dir=str(out), save_steps=10_000))

def test_tld_characters_are_ranked_first(demo_model):
    predictor = Predictor.from_dir(demo_model, 'cpu')
    valid = load_corpus('sample').valid[:300]
    queries, answers = [], []
    for d in valid:
        start = d.rfind('.') + 1
        for i in range(start, len(d)):
            queries.append(d[:i] + '?' + d[i + 1:])
            answers.append(d[i])
    predictions = predictor.predict(queries, top_k=1)
    accuracy = np.mean([p.masks[0].top[0][0] == a for p, a in zip(predictions, answers)])
    assert accuracy > 0.6, accuracy
    assert predictor.predict(['example.c?m'])[0].filled == 'example.com'
