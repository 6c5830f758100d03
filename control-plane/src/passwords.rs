//! Password hashes (Argon2id, PHC strings) computed in bounded, reused memory.
//!
//! Argon2 works in 19 MiB per hash by design. Computed the usual way, each hash allocates its
//! 19 MiB on whichever thread runs it; glibc keeps such a block in that thread's arena once its
//! threshold for giving memory back has risen, so sign-ins spread over the blocking threads left
//! the control plane 19 MiB bigger per thread (the soak found it), and a burst of sign-ins could
//! hold 19 MiB per blocking thread at once (up to 512 of them). Here at most one hash per CPU
//! runs at a time, each in a buffer taken from a pool and put back: the memory stays at one
//! buffer per CPU at most, however many sign-ins arrive and on whichever threads.

use std::sync::{Condvar, LazyLock, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

#[derive(Debug, thiserror::Error)]
#[error("password hashing: {0}")]
pub struct HashError(String);

impl From<argon2::password_hash::Error> for HashError {
    fn from(e: argon2::password_hash::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<argon2::Error> for HashError {
    fn from(e: argon2::Error) -> Self {
        Self(e.to_string())
    }
}

/// A new hash of `password` with a random salt, with Argon2id's default parameters.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
    let params = Params::default();
    let output = compute(password, Algorithm::Argon2id, Version::V0x13, &params, &salt, Params::DEFAULT_OUTPUT_LEN)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `phc`, a hash made by [`hash`] (or any Argon2 PHC string, with
/// its own parameters). An unreadable hash matches nothing.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(algorithm), Some(expected), Some(salt)) = (Algorithm::try_from(parsed.algorithm), parsed.hash, parsed.salt)
    else {
        return false;
    };
    let version = parsed.version.map_or(Ok(Version::default()), Version::try_from);
    let (Ok(version), Ok(params)) = (version, Params::try_from(&parsed)) else { return false };
    let salt = SaltString::from_b64(salt.as_str());
    // `Output` compares in constant time.
    salt.is_ok_and(|salt| {
        compute(password, algorithm, version, &params, &salt, expected.len()).is_ok_and(|output| output == expected)
    })
}

fn compute(
    password: &str,
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    salt: &SaltString,
    output_len: usize,
) -> Result<Output, HashError> {
    let mut salt_bytes = [0u8; 64];
    let salt = salt.as_salt().decode_b64(&mut salt_bytes)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut memory = MEMORY.take();
    memory.resize(params.block_count(), Block::default());
    let output = Output::init_with(output_len, |out| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..])?;
        Ok(())
    });
    MEMORY.put_back(memory);
    Ok(output?)
}

static MEMORY: LazyLock<MemoryPool> =
    LazyLock::new(|| MemoryPool::new(std::thread::available_parallelism().map_or(1, usize::from)));

/// Buffers for hashes; a taker waits while `limit` are in use.
struct MemoryPool {
    state: Mutex<PoolState>,
    returned: Condvar,
    limit: usize,
}

struct PoolState {
    /// Buffers not in use, the most recently used last (taken first: one sign-in at a time
    /// keeps using one buffer).
    free: Vec<Vec<Block>>,
    /// Buffers in existence, in use or not.
    made: usize,
}

impl MemoryPool {
    fn new(limit: usize) -> Self {
        Self { state: Mutex::new(PoolState { free: Vec::new(), made: 0 }), returned: Condvar::new(), limit }
    }

    /// A buffer, possibly empty (sized by the caller); blocks while every buffer is in use.
    fn take(&self) -> Vec<Block> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(buffer) = state.free.pop() {
                return buffer;
            }
            if state.made < self.limit {
                state.made += 1;
                return Vec::new();
            }
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put_back(&self, buffer: Vec<Block>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).free.push(buffer);
        self.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("correct-horse-battery").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct-horse-battery", &phc));
        assert!(!verify("correct-horse-batterY", &phc));
        assert!(!verify("correct-horse-battery", "not a hash"));
        assert_ne!(hash("correct-horse-battery").expect("hash"), phc, "each hash has its own salt");
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_itself_still_verify() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"sixteen byte slt").expect("salt");
        let light = Params::new(1024, 1, 1, None).expect("params");
        for argon2 in [Argon2::default(), Argon2::new(Algorithm::Argon2i, Version::V0x10, light)] {
            let phc = argon2.hash_password(b"an older password", &salt).expect("hash").to_string();
            assert!(verify("an older password", &phc), "{phc}");
            assert!(!verify("another password", &phc), "{phc}");
        }
    }

    #[test]
    fn takers_past_the_limit_wait_for_a_buffer_and_buffers_are_reused() {
        let pool = Arc::new(MemoryPool::new(2));
        let (mut a, b) = (pool.take(), pool.take());
        a.resize(8, Block::default());
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take().len())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third taker waits while two buffers are in use");
        pool.put_back(a);
        assert_eq!(waiter.join().expect("waiter"), 8, "it gets the buffer given back");
        pool.put_back(b);
        let state = pool.state.lock().expect("state");
        assert_eq!((state.made, state.free.len()), (2, 1), "no third buffer was made");
    }
}
