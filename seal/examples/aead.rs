//! The AEAD alone: MB/s of sealing and opening 64 KiB records through snow, no socket.
fn main() {
    for params in ["Noise_NNpsk0_25519_AESGCM_SHA256", "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s"] {
        let psk = [7u8; 32];
        let b = || snow::Builder::new(params.parse().unwrap()).psk(0, &psk).unwrap();
        let mut i = b().build_initiator().unwrap();
        let mut r = b().build_responder().unwrap();
        let mut m = vec![0u8; 65535];
        let mut p = vec![0u8; 65535];
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        let i = i.into_stateless_transport_mode().unwrap();
        let r = r.into_stateless_transport_mode().unwrap();
        let plain = vec![1u8; 65519];
        let start = std::time::Instant::now();
        let records = 8192u64;
        for nonce in 0..records {
            let n = i.write_message(nonce, &plain, &mut m).unwrap();
            r.read_message(nonce, &m[..n], &mut p).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{params}: seal+open {:.0} MB/s", (records * 65519) as f64 / secs / 1e6);
    }
}
