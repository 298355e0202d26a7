//! A packed batch: the token ids of several inputs concatenated, with no padding.

use std::ops::Range;

/// Token ids of several sequences laid end to end; sequence `i` spans `offsets[i]..offsets[i+1]`.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    ids: Vec<u32>,
    offsets: Vec<usize>,
    /// Task adapter of each sequence (jina-embeddings-v3); empty when no sequence has one.
    tasks: Vec<Option<usize>>,
    /// Token type of each token (cross-encoder pairs); empty when all are 0.
    token_types: Vec<u8>,
    /// Keys each sequence's queries attend to: its first `n` tokens (ColBERT's expanded
    /// queries, whose `[MASK]` padding is not attended to); empty when every sequence attends
    /// to all of its tokens.
    attended: Vec<usize>,
}

impl PackedBatch {
    /// Packs the given sequences in order.
    pub fn new<S: AsRef<[u32]>>(sequences: &[S]) -> Self {
        let total = sequences.iter().map(|s| s.as_ref().len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for s in sequences {
            ids.extend_from_slice(s.as_ref());
            offsets.push(ids.len());
        }
        Self {
            ids,
            offsets,
            tasks: Vec::new(),
            token_types: Vec::new(),
            attended: Vec::new(),
        }
    }

    /// Limits the keys of each sequence to its first `attended[i]` tokens (one entry per
    /// sequence; an entry at or past the sequence's length leaves it whole).
    pub fn with_attended(mut self, attended: &[usize]) -> Self {
        assert_eq!(attended.len(), self.len(), "one key count per sequence");
        self.attended = if (0..self.len()).any(|i| attended[i] < self.range(i).len()) {
            attended.to_vec()
        } else {
            Vec::new()
        };
        self
    }

    /// Per sequence, the number of leading tokens its queries attend to (`None`: all of them).
    pub fn attended(&self) -> Option<&[usize]> {
        (!self.attended.is_empty()).then_some(self.attended.as_slice())
    }

    /// Sets the token type of every token (one entry per token).
    pub fn with_token_types(mut self, types: Vec<u8>) -> Self {
        assert_eq!(types.len(), self.ids.len(), "one type per token");
        self.token_types = if types.iter().any(|&t| t != 0) {
            types
        } else {
            Vec::new()
        };
        self
    }

    /// The token type of token `i` of the batch (0 unless set).
    pub fn token_type(&self, i: usize) -> u8 {
        self.token_types.get(i).copied().unwrap_or(0)
    }

    /// Sets the task adapter of every sequence (`None` = the base weights); `tasks` has one
    /// entry per sequence.
    pub fn with_tasks(mut self, tasks: &[Option<usize>]) -> Self {
        assert_eq!(tasks.len(), self.len(), "one task per sequence");
        self.tasks = if tasks.iter().any(Option::is_some) {
            tasks.to_vec()
        } else {
            Vec::new()
        };
        self
    }

    /// The task adapter of sequence `i`.
    pub fn task(&self, i: usize) -> Option<usize> {
        self.tasks.get(i).copied().flatten()
    }

    /// Token ranges that share one task adapter, in order, for sequences that have one.
    pub fn task_spans(&self) -> Vec<(Range<usize>, usize)> {
        let mut spans: Vec<(Range<usize>, usize)> = Vec::new();
        for i in 0..self.tasks.len() {
            let Some(task) = self.task(i) else { continue };
            let r = self.range(i);
            match spans.last_mut() {
                Some((last, t)) if *t == task && last.end == r.start => last.end = r.end,
                _ => spans.push((r, task)),
            }
        }
        spans
    }

    /// All token ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Sequence boundaries (`len() + 1` entries, starting at 0).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Total token count.
    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token range of sequence `i`.
    pub fn range(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Length of the longest sequence.
    pub fn max_len(&self) -> usize {
        self.offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }
}

/// How many of `lengths`, taken in order, fit in `budget` tokens together (possibly none).
/// The one rule every batch former uses (server scheduler, `batch`, `embed`, `bench`).
pub fn fits_in_budget(lengths: impl IntoIterator<Item = usize>, budget: usize) -> (usize, usize) {
    let (mut count, mut tokens) = (0, 0);
    for len in lengths {
        if tokens + len > budget {
            break;
        }
        tokens += len;
        count += 1;
    }
    (count, tokens)
}

/// Splits inputs (given by their lengths, in order) into consecutive batches of at most
/// `budget` tokens; an input longer than the budget makes a batch of its own.
pub fn budget_batches(lengths: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let (count, _) = fits_in_budget(lengths[start..].iter().copied(), budget);
        let end = start + count.max(1);
        batches.push(start..end);
        start = end;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_batches_cover_every_input_once() {
        assert_eq!(budget_batches(&[3, 3, 3, 10, 1], 6), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(budget_batches(&[], 6), Vec::<Range<usize>>::new());
        assert_eq!(fits_in_budget([2, 2, 5], 4), (2, 4));
        assert_eq!(fits_in_budget([5], 4), (0, 0));
    }

    #[test]
    fn empty_sequences_are_kept_in_place() {
        let b = PackedBatch::new(&[vec![1u32, 2], vec![], vec![3]]);
        assert_eq!((b.len(), b.total_tokens(), b.range(1)), (3, 3, 2..2));
        assert_eq!(b.max_len(), 2);
    }
}
