//! A packed batch: the token ids of several inputs concatenated, with no padding.

use std::ops::Range;

/// Token ids of several sequences laid end to end; sequence `i` spans `offsets[i]..offsets[i+1]`.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    ids: Vec<u32>,
    offsets: Vec<usize>,
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
        Self { ids, offsets }
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
