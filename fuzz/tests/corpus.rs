//! Replays the corpus (the seeds and every saved crash) through every target, as part of
//! `cargo test`, and checks that the seed corpus is the one `splice-fuzz seed` writes.

use splice_fuzz::{TARGETS, corpus_root, file_name, read_corpus, run_one};

#[test]
fn corpus_replays_without_failure() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let files = read_corpus(&corpus_root().join(name)).expect("read the corpus");
        assert!(!files.is_empty(), "no corpus for {name}");
        for (path, input) in files {
            if let Err(crash) = run_one(*target, &input) {
                failures.push(format!("{}: {}", path.display(), crash.message));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seed_corpus_is_up_to_date() {
    for (name, input) in splice_fuzz::seeds::all() {
        let path = corpus_root().join(name).join(file_name("seed", &input));
        assert!(
            path.exists(),
            "{} is missing: run `cargo run -p splice-fuzz -- seed`",
            path.display()
        );
    }
}

/// Every target runs on inputs of every short length without failing (the empty input, a
/// byte, a few), and a short bounded run from the corpus finds nothing.
#[test]
fn short_inputs_and_a_bounded_run() {
    for (name, target) in TARGETS {
        for len in 0..8 {
            for byte in [0u8, 0x02, 0x80, 0xff] {
                let input = vec![byte; len];
                if let Err(crash) = run_one(*target, &input) {
                    panic!("{name} on {input:?}: {}", crash.message);
                }
            }
        }
        let corpus: Vec<Vec<u8>> = read_corpus(&corpus_root().join(name))
            .expect("read the corpus")
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        let budget = splice_fuzz::Budget {
            time: std::time::Duration::from_secs(2),
            max_runs: 2000,
            seed: 1,
            max_len: 8192,
        };
        if let Err(crash) = splice_fuzz::run(*target, &corpus, budget) {
            panic!("{name} on {:?}: {}", crash.input, crash.message);
        }
    }
}

/// A target that breaks its invariant is caught, with the message: the runner can fail.
#[test]
fn a_failing_target_is_reported() {
    fn fails_on_x(data: &[u8]) {
        assert!(!data.contains(&b'x'), "found an x");
    }
    assert!(run_one(fails_on_x, b"abc").is_ok());
    let crash = run_one(fails_on_x, b"axc").expect_err("it fails");
    assert_eq!(crash.input, b"axc");
    assert!(crash.message.contains("found an x"), "{}", crash.message);
    let budget = splice_fuzz::Budget {
        time: std::time::Duration::from_secs(30),
        max_runs: 1_000_000,
        seed: 3,
        max_len: 64,
    };
    let crash = splice_fuzz::run(fails_on_x, &[b"abc".to_vec()], budget).expect_err("found");
    assert!(crash.input.contains(&b'x'));
}
