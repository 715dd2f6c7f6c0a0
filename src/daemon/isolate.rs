//! A batch that fails is split in halves and each half retried, down to
//! single items: the items that run fine still produce their results, and
//! the one that fails is found and fails alone. One bad item in a batch of
//! `n` costs about `2·log2(n)` extra runs, once: its task is then paused
//! (`schedule::backoff`) and stays out of its neighbours' batches.

use std::fmt::Display;

/// Runs `items` with `run` (one result per item, in order, or an error for
/// the whole call) and returns one outcome per item, in order. A failing
/// call of more than one item is logged and its halves run again; the
/// error of an item is the one it got when run alone.
pub(super) fn run_isolating<T, R, E: Display>(
    items: &[T],
    run: &mut impl FnMut(&[T]) -> Result<Vec<R>, E>,
) -> Vec<Result<R, E>> {
    let mut out = Vec::with_capacity(items.len());
    run_into(items, run, &mut out);
    out
}

fn run_into<T, R, E: Display>(
    items: &[T],
    run: &mut impl FnMut(&[T]) -> Result<Vec<R>, E>,
    out: &mut Vec<Result<R, E>>,
) {
    if items.is_empty() {
        return;
    }
    match run(items) {
        Ok(results) => out.extend(results.into_iter().map(Ok)),
        Err(e) if items.len() == 1 => out.push(Err(e)),
        Err(e) => {
            tracing::warn!(
                jobs = items.len(),
                error = %e,
                "Inference failed for a batch; running its halves again to isolate the job that fails."
            );
            let (a, b) = items.split_at(items.len() / 2);
            run_into(a, run, out);
            run_into(b, run, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model: fails any call that contains a "bad" item, and records
    /// the sizes it was called with.
    fn fake(calls: &mut Vec<usize>) -> impl FnMut(&[&str]) -> Result<Vec<String>, String> + '_ {
        move |items| {
            calls.push(items.len());
            if items.iter().any(|i| i.starts_with("bad")) {
                Err(format!("out of bounds in a batch of {}", items.len()))
            } else {
                Ok(items.iter().map(|i| i.to_uppercase()).collect())
            }
        }
    }

    #[test]
    fn a_bad_item_fails_alone_and_its_neighbours_get_their_results() {
        let mut calls = Vec::new();
        let out = run_isolating(&["a", "bad", "c", "d"], &mut fake(&mut calls));
        assert_eq!(
            out,
            [
                Ok("A".to_string()),
                Err("out of bounds in a batch of 1".to_string()),
                Ok("C".to_string()),
                Ok("D".to_string()),
            ]
        );
        // 4 fails → [a, bad] fails, [c, d] runs → [a] runs, [bad] fails.
        assert_eq!(calls, [4, 2, 1, 1, 2]);
    }

    #[test]
    fn a_good_batch_runs_once_and_results_stay_in_order() {
        let mut calls = Vec::new();
        let out = run_isolating(&["x", "y", "z"], &mut fake(&mut calls));
        assert_eq!(
            out,
            [
                Ok("X".to_string()),
                Ok("Y".to_string()),
                Ok("Z".to_string())
            ]
        );
        assert_eq!(calls, [3]);
        assert!(run_isolating(&[], &mut fake(&mut calls)).is_empty());
        assert_eq!(calls, [3], "nothing to run, no call");
    }

    #[test]
    fn every_bad_item_is_isolated_in_an_odd_sized_batch() {
        let mut calls = Vec::new();
        let items = ["bad1", "b", "c", "d", "bad5"];
        let out = run_isolating(&items, &mut fake(&mut calls));
        let failed: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_err()).collect();
        assert_eq!(failed, [0, 4]);
        assert_eq!(out[1], Ok("B".to_string()));
        assert_eq!(out[3], Ok("D".to_string()));
        assert_eq!(out.len(), items.len());
        // Halves of 2 and 3; with both ends bad every split fails: 2n - 1
        // calls, the most there can be.
        assert_eq!(calls, [5, 2, 1, 1, 3, 1, 2, 1, 1]);
    }
}
