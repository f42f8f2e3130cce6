"""Planted features, units whose truth is known: the rule type and its exemplars (`features`), the
rule suite and its parts (`suite`), and phrasings outside the teacher's template grammar
(`paraphrases`)."""
