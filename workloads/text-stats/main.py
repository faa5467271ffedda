"""text-stats: counts and reading time of a text, with the standard library.

Input  {"text": str, "top"?: 1-100 (default 10), "words_per_minute"?: 50-1000 (default 238),
        "stopwords"?: bool (default true: leave common English words out of top_words)}
Output {"characters", "characters_no_spaces", "words", "unique_words", "sentences", "paragraphs", "lines",
        "average_word_length", "average_sentence_words", "reading_time_s", "reading_time_minutes",
        "top_words": [{"word", "count"}]}
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from workload_io import bool_field, emit, int_field, serve, text_field

MAX_INPUT_BYTES = 4 * 1024 * 1024
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
SENTENCE_END = re.compile(r"[.!?…]+(?=\s|$)|[。！？]+")
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now
of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves it's i'm don't""".split())  # noqa: SIM905 - read as prose


def handle(job: dict[str, Any]) -> dict[str, Any]:
    text = text_field(job, "text", allow_empty=True)
    assert text is not None
    top = int_field(job, "top", 10, 1, 100)
    wpm = int_field(job, "words_per_minute", 238, 50, 1000)
    skip_stopwords = bool_field(job, "stopwords", True)
    assert top is not None and wpm is not None
    emit("status", message="counting")
    words = [w.lower().replace("’", "'") for w in WORD.findall(text)]
    counts = Counter(words)
    sentences = len(SENTENCE_END.findall(text.strip()))
    if words and not SENTENCE_END.search(text.strip()[-1:]):
        sentences += 1  # a last sentence without its full stop
    ranked = ((w, c) for w, c in counts.most_common() if not (skip_stopwords and w in STOPWORDS))
    top_words = [{"word": w, "count": c} for _, (w, c) in zip(range(top), ranked)]
    reading_s = len(words) * 60 / wpm
    return {
        "characters": len(text),
        "characters_no_spaces": sum(1 for ch in text if not ch.isspace()),
        "words": len(words),
        "unique_words": len(counts),
        "sentences": sentences,
        "paragraphs": len([p for p in re.split(r"\n\s*\n", text) if p.strip()]),
        "lines": len(text.splitlines()),
        "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0,
        "average_sentence_words": round(len(words) / sentences, 2) if sentences else 0,
        "reading_time_s": round(reading_s, 1),
        "reading_time_minutes": math.ceil(reading_s / 60) if words else 0,
        "top_words": top_words,
    }


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
