//! A slab with generations: an index is reused, a stale (index, generation) finds nothing.

/// One slot: its generation and what it holds (`None`: free, or taken out for a call).
pub(crate) struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    /// Slots in use (taken-out ones included).
    used: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Adds `value`; gives its index and generation.
    pub(crate) fn insert(&mut self, value: T) -> (u32, u32) {
        self.used += 1;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.0 = slot.0.wrapping_add(1) & 0xff_ffff;
        slot.1 = Some(value);
        (index, slot.0)
    }

    pub(crate) fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.0 != generation {
            return None;
        }
        slot.1.as_mut()
    }

    /// Two different entries at once.
    pub(crate) fn get2_mut(&mut self, a: (u32, u32), b: (u32, u32)) -> Option<[&mut T; 2]> {
        if a.0 == b.0 {
            return None;
        }
        let (i, j) = (a.0 as usize, b.0 as usize);
        if i.max(j) >= self.slots.len() {
            return None;
        }
        let (x, y) = if i < j {
            let (lo, hi) = self.slots.split_at_mut(j);
            (&mut lo[i], &mut hi[0])
        } else {
            let (lo, hi) = self.slots.split_at_mut(i);
            (&mut hi[0], &mut lo[j])
        };
        if x.0 != a.1 || y.0 != b.1 {
            return None;
        }
        Some([x.1.as_mut()?, y.1.as_mut()?])
    }

    /// Removes and returns the entry.
    pub(crate) fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let value = self.take(index, generation)?;
        self.free(index);
        Some(value)
    }

    /// Takes the entry out for a call; the slot stays reserved until [`Slab::put_back`] or
    /// [`Slab::free`].
    pub(crate) fn take(&mut self, index: u32, generation: u32) -> Option<T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.0 != generation {
            return None;
        }
        slot.1.take()
    }

    pub(crate) fn put_back(&mut self, index: u32, value: T) {
        self.slots[index as usize].1 = Some(value);
    }

    /// Frees a slot whose entry was taken.
    pub(crate) fn free(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.1 = None;
        // Bump the generation so that a stale reference finds nothing.
        slot.0 = slot.0.wrapping_add(1) & 0xff_ffff;
        self.free.push(index);
        self.used -= 1;
    }

    /// The (index, generation) of every entry present.
    pub(crate) fn keys(&self) -> Vec<(u32, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1.is_some())
            .map(|(i, s)| (i as u32, s.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn stale_references_find_nothing_and_slots_are_reused() {
        let mut s = Slab::default();
        let (a, ga) = s.insert("a");
        let (b, gb) = s.insert("b");
        assert_eq!(s.get_mut(a, ga), Some(&mut "a"));
        assert_eq!(s.remove(a, ga), Some("a"));
        assert_eq!(s.get_mut(a, ga), None, "removed");
        let (c, gc) = s.insert("c");
        assert_eq!(c, a, "the slot is reused");
        assert_ne!(gc, ga, "with a new generation");
        assert_eq!(s.get_mut(a, ga), None, "the old reference stays stale");
        assert_eq!(s.get_mut(c, gc), Some(&mut "c"));
        // Two at once, either order; the same one twice is refused.
        let [x, y] = s.get2_mut((b, gb), (c, gc)).expect("two");
        assert_eq!((*x, *y), ("b", "c"));
        let [y, x] = s.get2_mut((c, gc), (b, gb)).expect("two");
        assert_eq!((*x, *y), ("b", "c"));
        assert!(s.get2_mut((b, gb), (b, gb)).is_none());
        // Taken out for a call: the slot stays reserved, then comes back or is freed.
        let v = s.take(b, gb).expect("taken");
        assert!(s.get_mut(b, gb).is_none());
        assert!(!s.is_empty());
        s.put_back(b, v);
        assert_eq!(s.keys().len(), 2);
        let _ = s.take(b, gb);
        s.free(b);
        let _ = s.remove(c, gc);
        assert!(s.is_empty());
    }
}
