//! Decoding: greedy search and transformers' vectorised beam search, with the
//! reference's logits processors (no-repeat-ngram, forced BOS, forced EOS).
//!
//! Pure logic over a [`DecoderStep`], so the search itself is tested without
//! ONNX Runtime; the model supplies a step that runs the decoder graphs with
//! its KV cache.

/// Decoding settings for a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    pub strategy: Strategy,
    pub max_new_tokens: usize,
}

/// Greedy or beam search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Greedy,
    Beam { num_beams: usize },
}

/// What the search needs from the generation config.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    pub decoder_start_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub forced_bos_token_id: Option<i64>,
    pub forced_eos_token_id: Option<i64>,
    pub no_repeat_ngram_size: usize,
    pub max_new_tokens: usize,
    pub early_stopping: super::config::EarlyStopping,
    pub length_penalty: f32,
}

impl SearchConfig {
    /// transformers: `max_length = decoder prompt length (1) + max_new_tokens`.
    pub fn max_length(&self) -> usize {
        1 + self.max_new_tokens
    }
}

/// One decoder step for `rows` sequences.
pub trait DecoderStep {
    type Error;
    /// Feed one new token per row and return `rows × vocab` logits for the
    /// next position. `reorder`, when given, says for each row which row of
    /// the previous step's cache it continues (beam search); the decoder
    /// self-attention cache must be gathered accordingly before the step.
    fn step(&mut self, tokens: &[i64], reorder: Option<&[usize]>) -> Result<Vec<f32>, Self::Error>;
    fn vocab_size(&self) -> usize;
}

/// Applies the reference's processors, in the reference's order, to one row
/// of scores. `ids` is the sequence so far, starting with the decoder start
/// token.
pub fn process_scores(cfg: &SearchConfig, ids: &[i64], scores: &mut [f32]) {
    let cur_len = ids.len();
    let n = cfg.no_repeat_ngram_size;
    if n > 0 && cur_len >= n {
        let prefix = &ids[cur_len + 1 - n..];
        for window in ids.windows(n) {
            if window[..n - 1] == *prefix {
                if let Some(s) = usize::try_from(window[n - 1])
                    .ok()
                    .and_then(|t| scores.get_mut(t))
                {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
    if let Some(bos) = cfg.forced_bos_token_id {
        if cur_len == 1 {
            force(scores, bos);
        }
    }
    if let Some(eos) = cfg.forced_eos_token_id {
        if cur_len == cfg.max_length() - 1 {
            force(scores, eos);
        }
    }
}

fn force(scores: &mut [f32], token: i64) {
    scores.fill(f32::NEG_INFINITY);
    if let Some(s) = usize::try_from(token).ok().and_then(|t| scores.get_mut(t)) {
        *s = 0.0;
    }
}

/// First index of the maximum, like `torch.argmax`.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// `log_softmax` in f32.
fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - log_sum;
    }
}

/// Greedy search for `batch` rows whose first decoder step has been prepared
/// by the caller. Returns the sequences as transformers does: each starts
/// with the decoder start token; rows that finish early are padded with the
/// pad token up to the longest row.
pub fn greedy<S: DecoderStep>(
    cfg: &SearchConfig,
    batch: usize,
    step: &mut S,
) -> Result<Vec<Vec<i64>>, S::Error> {
    let vocab = step.vocab_size();
    let mut seqs: Vec<Vec<i64>> = vec![vec![cfg.decoder_start_token_id]; batch];
    let mut unfinished = vec![true; batch];
    let max_length = cfg.max_length();
    let mut tokens: Vec<i64> = vec![cfg.decoder_start_token_id; batch];
    while seqs[0].len() < max_length {
        let mut logits = step.step(&tokens, None)?;
        for (row, seq) in seqs.iter_mut().enumerate() {
            let scores = &mut logits[row * vocab..(row + 1) * vocab];
            process_scores(cfg, seq, scores);
            let next = if unfinished[row] {
                argmax(scores) as i64
            } else {
                cfg.pad_token_id
            };
            seq.push(next);
            tokens[row] = next;
            if next == cfg.eos_token_id {
                unfinished[row] = false;
            }
        }
        if unfinished.iter().all(|u| !u) {
            break;
        }
    }
    Ok(seqs)
}

/// transformers' vectorised beam search (`_beam_search` in
/// generation/utils.py), one EOS token, no sampling, one returned sequence
/// per input. The step runs on `batch * num_beams` rows.
pub fn beam_search<S: DecoderStep>(
    cfg: &SearchConfig,
    batch: usize,
    num_beams: usize,
    step: &mut S,
) -> Result<Vec<Vec<i64>>, S::Error> {
    use super::config::EarlyStopping;
    const VERY_NEGATIVE: f32 = -1.0e9;
    let vocab = step.vocab_size();
    let max_length = cfg.max_length();
    let prompt_len = 1usize;
    let beams_to_keep = 2 * num_beams;

    // Running state, per batch item and beam.
    let mut running: Vec<Vec<Vec<i64>>> =
        vec![vec![vec![cfg.decoder_start_token_id]; num_beams]; batch];
    let mut running_scores: Vec<Vec<f32>> = (0..batch)
        .map(|_| {
            (0..num_beams)
                .map(|b| if b == 0 { 0.0 } else { VERY_NEGATIVE })
                .collect()
        })
        .collect();
    // Finished hypotheses: sequence, score, finished flag.
    let mut finished: Vec<Vec<(Vec<i64>, f32, bool)>> =
        vec![vec![(vec![cfg.decoder_start_token_id], VERY_NEGATIVE, false); num_beams]; batch];
    let mut heuristic_unsatisfied = vec![true; batch];

    let mut tokens: Vec<i64> = vec![cfg.decoder_start_token_id; batch * num_beams];
    let mut reorder: Option<Vec<usize>> = None;
    let mut cur_len = prompt_len;
    loop {
        let mut logits = step.step(&tokens, reorder.as_deref())?;
        let mut next_reorder = vec![0usize; batch * num_beams];
        let mut all_candidates_stop = true;
        for b in 0..batch {
            // Accumulated log-probs over beams × vocab.
            let mut acc: Vec<f32> = Vec::with_capacity(num_beams * vocab);
            for beam in 0..num_beams {
                let row = b * num_beams + beam;
                let scores = &mut logits[row * vocab..(row + 1) * vocab];
                log_softmax(scores);
                process_scores(cfg, &running[b][beam], scores);
                let base = running_scores[b][beam];
                acc.extend(scores.iter().map(|&s| s + base));
            }
            let top = top_k(&acc, beams_to_keep);
            // Candidates: (score, source beam, token, sequence, stops?).
            let mut cands: Vec<(f32, usize, i64, bool)> = Vec::with_capacity(beams_to_keep);
            for &i in &top {
                let beam = i / vocab;
                let token = (i % vocab) as i64;
                let stops = token == cfg.eos_token_id || cur_len + 1 >= max_length;
                cands.push((acc[i], beam, token, stops));
            }
            all_candidates_stop &= cands.iter().all(|c| c.3);

            // Running beams for the next iteration: best non-stopping.
            let masked: Vec<f32> = cands
                .iter()
                .map(|c| c.0 + if c.3 { VERY_NEGATIVE } else { 0.0 })
                .collect();
            let next_idx = top_k(&masked, num_beams);
            let new_running: Vec<Vec<i64>> = next_idx
                .iter()
                .map(|&k| {
                    let mut s = running[b][cands[k].1].clone();
                    s.push(cands[k].2);
                    s
                })
                .collect();

            // Finished hypotheses: only the top num_beams candidates may finish.
            let denom = ((cur_len + 1 - prompt_len) as f32).powf(cfg.length_penalty);
            let full = finished[b].iter().all(|f| f.2) && cfg.early_stopping == EarlyStopping::True;
            let mut merged: Vec<(Vec<i64>, f32, bool)> = finished[b].clone();
            for (k, c) in cands.iter().enumerate() {
                let just_finished = c.3 && k < num_beams;
                let mut score = c.0 / denom;
                if full {
                    score += VERY_NEGATIVE;
                }
                if !heuristic_unsatisfied[b] {
                    score += VERY_NEGATIVE;
                }
                if !just_finished {
                    score += VERY_NEGATIVE;
                }
                let mut s = running[b][c.1].clone();
                s.push(c.2);
                merged.push((s, score, just_finished));
            }
            let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
            finished[b] = top_k(&merged_scores, num_beams)
                .into_iter()
                .map(|k| merged[k].clone())
                .collect();

            for (slot, &k) in next_idx.iter().enumerate() {
                next_reorder[b * num_beams + slot] = b * num_beams + cands[k].1;
                tokens[b * num_beams + slot] = cands[k].2;
            }
            running_scores[b] = next_idx.iter().map(|&k| masked[k]).collect();
            running[b] = new_running;
        }
        cur_len += 1;

        // Early-stop heuristic and loop condition.
        for b in 0..batch {
            let best_len = if cfg.early_stopping == EarlyStopping::Never && cfg.length_penalty > 0.0
            {
                max_length - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_running = running_scores[b][0] / (best_len as f32).powf(cfg.length_penalty);
            let min_finished = finished[b]
                .iter()
                .map(|f| f.1)
                .fold(f32::INFINITY, f32::min);
            let improvable = finished[b]
                .iter()
                .any(|f| best_running > if f.2 { min_finished } else { VERY_NEGATIVE });
            heuristic_unsatisfied[b] = heuristic_unsatisfied[b] && improvable;
        }
        let improvement_possible = heuristic_unsatisfied.iter().any(|&u| u);
        let all_finished = finished.iter().all(|f| f.iter().all(|h| h.2));
        let exists_open_beam = !(all_finished && cfg.early_stopping == EarlyStopping::True);
        if !(improvement_possible && exists_open_beam && !all_candidates_stop) {
            break;
        }
        reorder = Some(next_reorder);
    }

    // Best finished hypothesis per item (finished sorted best first), padded
    // to the longest generated length.
    let best: Vec<Vec<i64>> = finished.into_iter().map(|f| f[0].0.clone()).collect();
    let out_len = best.iter().map(Vec::len).max().unwrap_or(1);
    Ok(best
        .into_iter()
        .map(|mut s| {
            s.resize(out_len, cfg.pad_token_id);
            s
        })
        .collect())
}

/// Indices of the k largest values, largest first; ties keep the lower index
/// first (a stable order; torch.topk's order among exact ties is
/// unspecified).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| {
        values[*b]
            .partial_cmp(&values[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::super::config::EarlyStopping;
    use super::*;

    fn cfg(max_new_tokens: usize) -> SearchConfig {
        SearchConfig {
            decoder_start_token_id: 2,
            eos_token_id: 2,
            pad_token_id: 1,
            forced_bos_token_id: Some(0),
            forced_eos_token_id: Some(2),
            no_repeat_ngram_size: 3,
            max_new_tokens,
            early_stopping: EarlyStopping::True,
            length_penalty: 1.0,
        }
    }

    /// A toy language model: logits are a fixed function of the row's last
    /// token, so beam reordering is observable.
    struct Toy {
        vocab: usize,
        last: Vec<i64>,
        table: Vec<Vec<f32>>,
        reorders: usize,
    }

    impl Toy {
        fn new(vocab: usize, rows: usize, seed: u64) -> Self {
            let mut state = seed;
            let mut rnd = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 8.0 - 4.0
            };
            let table = (0..vocab)
                .map(|_| (0..vocab).map(|_| rnd()).collect())
                .collect();
            Self {
                vocab,
                last: vec![0; rows],
                table,
                reorders: 0,
            }
        }
    }

    impl DecoderStep for Toy {
        type Error = ();
        fn step(&mut self, tokens: &[i64], reorder: Option<&[usize]>) -> Result<Vec<f32>, ()> {
            if let Some(r) = reorder {
                assert_eq!(r.len(), tokens.len());
                self.reorders += 1;
            }
            self.last = tokens.to_vec();
            Ok(tokens
                .iter()
                .flat_map(|&t| self.table[t as usize].clone())
                .collect())
        }
        fn vocab_size(&self) -> usize {
            self.vocab
        }
    }

    #[test]
    fn no_repeat_ngram_bans_the_token_that_would_repeat_a_trigram() {
        let c = cfg(10);
        let mut scores = vec![0.0f32; 8];
        // ids: 2 0 5 6 7 5 6 → the trigram (5,6,7) exists, so 7 is banned.
        process_scores(&c, &[2, 0, 5, 6, 7, 5, 6], &mut scores);
        assert_eq!(scores[7], f32::NEG_INFINITY);
        assert_eq!(scores.iter().filter(|s| s.is_infinite()).count(), 1);
        // Too short for any trigram.
        let mut scores = vec![0.0f32; 8];
        process_scores(&c, &[2, 5], &mut scores);
        assert!(scores.iter().all(|s| s.is_finite()));
    }

    #[test]
    fn forced_bos_then_forced_eos_at_the_length_limit() {
        let c = cfg(4); // max_length 5: EOS forced when the sequence has 4 ids
        let mut s = vec![1.0f32; 6];
        process_scores(&c, &[2], &mut s);
        assert_eq!(argmax(&s), 0);
        assert!(s[1].is_infinite());
        let mut s = vec![1.0f32; 6];
        process_scores(&c, &[2, 0, 4, 5], &mut s);
        assert_eq!(argmax(&s), 2);
    }

    #[test]
    fn greedy_starts_with_start_and_bos_and_ends_with_forced_eos() {
        let c = cfg(6);
        let mut toy = Toy::new(9, 2, 7);
        let out = greedy(&c, 2, &mut toy).unwrap();
        for seq in &out {
            assert_eq!(&seq[..2], &[2, 0]);
            assert!(seq.len() <= c.max_length());
        }
        // Rows end with EOS, or with padding after an earlier EOS.
        for seq in &out {
            let eos = seq[1..].iter().position(|&t| t == 2).expect("an EOS") + 1;
            assert!(seq[eos + 1..].iter().all(|&t| t == 1));
        }
    }

    #[test]
    fn greedy_picks_the_argmax_of_the_toy_model() {
        let c = SearchConfig {
            forced_eos_token_id: None,
            no_repeat_ngram_size: 0,
            ..cfg(5)
        };
        let mut toy = Toy::new(7, 1, 3);
        let table = toy.table.clone();
        let out = greedy(&c, 1, &mut toy).unwrap();
        let mut expect = vec![2i64, 0];
        while expect.len() < out[0].len() {
            let last = *expect.last().unwrap() as usize;
            expect.push(argmax(&table[last]) as i64);
        }
        assert_eq!(out[0], expect);
    }

    #[test]
    fn beam_search_with_one_beam_equals_greedy_on_log_probs() {
        let c = cfg(8);
        let g = greedy(&c, 1, &mut Toy::new(11, 1, 5)).unwrap();
        let b = beam_search(&c, 1, 1, &mut Toy::new(11, 1, 5)).unwrap();
        assert_eq!(g, b);
    }

    #[test]
    fn beam_search_beats_or_equals_greedy_in_log_probability() {
        let c = SearchConfig {
            no_repeat_ngram_size: 0,
            ..cfg(6)
        };
        let toy = Toy::new(10, 3, 11);
        let table = toy.table.clone();
        let score = |seq: &[i64]| -> f32 {
            let mut total = 0.0;
            for w in seq.windows(2).skip(1) {
                let mut row = table[w[0] as usize].clone();
                log_softmax(&mut row);
                total += row[w[1] as usize];
            }
            total / (seq.len() - 1) as f32
        };
        let g = greedy(&c, 1, &mut Toy::new(10, 1, 11)).unwrap();
        let mut t = Toy::new(10, 3, 11);
        let b = beam_search(&c, 1, 3, &mut t).unwrap();
        assert!(t.reorders > 0);
        assert_eq!(&b[0][..2], &[2, 0]);
        assert!(score(&b[0]) >= score(&g[0]) - 1e-5, "{:?} vs {:?}", b, g);
    }

    #[test]
    fn top_k_orders_largest_first_with_stable_ties() {
        assert_eq!(
            top_k(&[1.0, 3.0, 3.0, 2.0, f32::NEG_INFINITY], 3),
            vec![1, 2, 3]
        );
        assert_eq!(top_k(&[1.0], 4), vec![0]);
    }
}
