import pytest

from skillmoe_ray.engines.base import Engine
from skillmoe_ray.skills.embeddings import get_embedder
from skillmoe_ray.prompts import KEYWORD_PROMPT
from skillmoe_ray.skills.extract import (
    EmbeddingTagger,
    KeywordExtractor,
    SkillAligner,
    load_vocabulary,
    parse_keywords,
    vote_keywords,
)
from skillmoe_ray.tasks.catalogue import Question


def test_parse_keywords():
    assert parse_keywords("Keywords: Organic Chemistry, stoichiometry.") == ["organic chemistry", "stoichiometry"]
    assert parse_keywords("Sure!\nKeywords: <algebra>, *probability*\nMore text") == ["algebra", "probability"]
    assert parse_keywords("") == []


def test_vote_keywords_keeps_repeated_short_keywords():
    samples = [["algebra", "a very long keyword indeed"], ["algebra", "geometry", "a very long keyword indeed"],
               ["geometry"], ["calculus"], []]
    assert vote_keywords(samples) == ["algebra", "geometry"]
    assert vote_keywords([["x", "x"], []]) == []  # repeated inside one sample counts once


class ScriptedKeywordEngine(Engine):
    """Answers keyword prompts from a script (a unit-test engine; the real ones are tested elsewhere)."""

    def __init__(self, answers):
        super().__init__("scripted")
        self.answers = answers
        self.calls = []

    def generate(self, requests, sampling):
        self.calls.append((requests, sampling))
        return [self.answers[len(self.calls) - 1] for _ in requests]


def test_keyword_extractor_samples_k_times_and_votes():
    engine = ScriptedKeywordEngine(["Keywords: algebra, geometry", "Keywords: algebra", "Keywords: geometry, logic",
                                    "Keywords: logic", "Keywords: algebra"])
    q = Question("AIME24", "test", 0, "What is 1+1?")
    out = KeywordExtractor(engine, samples=5).raw_skills([q])
    assert out == [["algebra", "geometry", "logic"]]
    reqs, sampling = engine.calls[0]
    assert reqs[0].prompt == KEYWORD_PROMPT.format(question="What is 1+1?") and reqs[0].role == "keyword"
    assert len(engine.calls) == 5 and len({s.seed for _, s in engine.calls}) == 5


def test_builtin_vocabulary_fits_the_papers_length_limit():
    vocab = load_vocabulary()
    assert len(vocab) > 100 and all(len(s) <= 20 for s in vocab)


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("all-MiniLM-L6-v2")


def test_packaged_minilm_cosines(embedder):
    v = embedder.encode(["algebra", "linear algebra", "biology", "molecular biology"])
    assert v.shape == (4, 384)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert v[2] @ v[3] > 0.6


def test_embedding_tagger_and_aligner(embedder):
    vocab = ["organic chemistry", "contract law", "probability", "world history"]
    qs = [Question("X", "test", 0, "An enforceable agreement between two parties was breached; what damages apply?"),
          Question("X", "test", 1, "What is the chance of rolling two sixes with two fair dice?")]
    tags = EmbeddingTagger(embedder, vocab, top_n=1).raw_skills(qs)
    assert tags == [["contract law"], ["probability"]]
    aligner = SkillAligner(embedder, ["statistics", "property law", "biology"])
    assert aligner.align([["probability", "statistics"], ["tort law"]]) == [["statistics"], ["property law"]]
