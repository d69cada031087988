"""ReWatch's data synthesis over a hosted LVLM (captions -> QA -> filters -> Multi-Agent ReAct CoT).
It imports `rewatch_jax` (records, VideoSpec, decoder, the hosted client); `rewatch_jax` never
imports it."""
