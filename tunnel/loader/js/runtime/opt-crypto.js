// crypto: getRandomValues, randomUUID (ChaCha20 seeded by the host), subtle.digest, HMAC keys,
// subtle.timingSafeEqual, CryptoKey. An optional part of the runtime: engine.py instantiates it
// (after the core, before 'init') only for workers whose code names crypto or CryptoKey. It is
// a fragment of a function body with the core's internals in R (see 50-host.js).
  const {def, emit, op, toBytes, bytesToB64, fromResult, internal: __internal, GLOBALS} = R;
  // ---------------------------------------------------------------- randomness
  // crypto.getRandomValues / randomUUID draw from a ChaCha20 generator with fast key erasure
  // (each draw rekeys it first), seeded and reseeded with the host's os.urandom: any request size
  // up to the Web Crypto maximum (65,536 bytes) is served at once, and no pool has to be kept.
  const chachaKey = new Uint32Array(8);
  let chachaCounter = 0, drawnSinceSeed = 0;
  const RESEED_BYTES = 1 << 20;
  const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  // ChaCha20 blocks (RFC 8439; nonce 0, counter chachaCounter…) with chachaKey, as 16 words each
  // into the Uint32Array out. Locals, not arrays: QuickJS runs this ≈2.5× faster (64 KiB in ≈25 ms).
  function chachaBlocks(out, blocks) {
    const k0 = chachaKey[0], k1 = chachaKey[1], k2 = chachaKey[2], k3 = chachaKey[3],
          k4 = chachaKey[4], k5 = chachaKey[5], k6 = chachaKey[6], k7 = chachaKey[7];
    for (let b = 0, o = 0; b < blocks; b++, o += 16) {
      const n = chachaCounter++;
      let x0 = 0x61707865, x1 = 0x3320646e, x2 = 0x79622d32, x3 = 0x6b206574,
          x4 = k0, x5 = k1, x6 = k2, x7 = k3, x8 = k4, x9 = k5, x10 = k6, x11 = k7,
          x12 = n, x13 = 0, x14 = 0, x15 = 0, t;
      for (let r = 0; r < 10; r++) {
        x0 = (x0 + x4) | 0; t = x12 ^ x0; x12 = (t << 16) | (t >>> 16);
        x8 = (x8 + x12) | 0; t = x4 ^ x8; x4 = (t << 12) | (t >>> 20);
        x0 = (x0 + x4) | 0; t = x12 ^ x0; x12 = (t << 8) | (t >>> 24);
        x8 = (x8 + x12) | 0; t = x4 ^ x8; x4 = (t << 7) | (t >>> 25);
        x1 = (x1 + x5) | 0; t = x13 ^ x1; x13 = (t << 16) | (t >>> 16);
        x9 = (x9 + x13) | 0; t = x5 ^ x9; x5 = (t << 12) | (t >>> 20);
        x1 = (x1 + x5) | 0; t = x13 ^ x1; x13 = (t << 8) | (t >>> 24);
        x9 = (x9 + x13) | 0; t = x5 ^ x9; x5 = (t << 7) | (t >>> 25);
        x2 = (x2 + x6) | 0; t = x14 ^ x2; x14 = (t << 16) | (t >>> 16);
        x10 = (x10 + x14) | 0; t = x6 ^ x10; x6 = (t << 12) | (t >>> 20);
        x2 = (x2 + x6) | 0; t = x14 ^ x2; x14 = (t << 8) | (t >>> 24);
        x10 = (x10 + x14) | 0; t = x6 ^ x10; x6 = (t << 7) | (t >>> 25);
        x3 = (x3 + x7) | 0; t = x15 ^ x3; x15 = (t << 16) | (t >>> 16);
        x11 = (x11 + x15) | 0; t = x7 ^ x11; x7 = (t << 12) | (t >>> 20);
        x3 = (x3 + x7) | 0; t = x15 ^ x3; x15 = (t << 8) | (t >>> 24);
        x11 = (x11 + x15) | 0; t = x7 ^ x11; x7 = (t << 7) | (t >>> 25);
        x0 = (x0 + x5) | 0; t = x15 ^ x0; x15 = (t << 16) | (t >>> 16);
        x10 = (x10 + x15) | 0; t = x5 ^ x10; x5 = (t << 12) | (t >>> 20);
        x0 = (x0 + x5) | 0; t = x15 ^ x0; x15 = (t << 8) | (t >>> 24);
        x10 = (x10 + x15) | 0; t = x5 ^ x10; x5 = (t << 7) | (t >>> 25);
        x1 = (x1 + x6) | 0; t = x12 ^ x1; x12 = (t << 16) | (t >>> 16);
        x11 = (x11 + x12) | 0; t = x6 ^ x11; x6 = (t << 12) | (t >>> 20);
        x1 = (x1 + x6) | 0; t = x12 ^ x1; x12 = (t << 8) | (t >>> 24);
        x11 = (x11 + x12) | 0; t = x6 ^ x11; x6 = (t << 7) | (t >>> 25);
        x2 = (x2 + x7) | 0; t = x13 ^ x2; x13 = (t << 16) | (t >>> 16);
        x8 = (x8 + x13) | 0; t = x7 ^ x8; x7 = (t << 12) | (t >>> 20);
        x2 = (x2 + x7) | 0; t = x13 ^ x2; x13 = (t << 8) | (t >>> 24);
        x8 = (x8 + x13) | 0; t = x7 ^ x8; x7 = (t << 7) | (t >>> 25);
        x3 = (x3 + x4) | 0; t = x14 ^ x3; x14 = (t << 16) | (t >>> 16);
        x9 = (x9 + x14) | 0; t = x4 ^ x9; x4 = (t << 12) | (t >>> 20);
        x3 = (x3 + x4) | 0; t = x14 ^ x3; x14 = (t << 8) | (t >>> 24);
        x9 = (x9 + x14) | 0; t = x4 ^ x9; x4 = (t << 7) | (t >>> 25);
      }
      out[o] = x0 + 0x61707865; out[o + 1] = x1 + 0x3320646e; out[o + 2] = x2 + 0x79622d32; out[o + 3] = x3 + 0x6b206574;
      out[o + 4] = x4 + k0; out[o + 5] = x5 + k1; out[o + 6] = x6 + k2; out[o + 7] = x7 + k3;
      out[o + 8] = x8 + k4; out[o + 9] = x9 + k5; out[o + 10] = x10 + k6; out[o + 11] = x11 + k7;
      out[o + 12] = x12 + n; out[o + 13] = x13; out[o + 14] = x14; out[o + 15] = x15;
    }
  }
  function seedRandom(text) {  // 32 latin-1 characters of host entropy, mixed into the key
    for (let i = 0; i < 8; i++) {
      chachaKey[i] ^= (text.charCodeAt(4 * i) | (text.charCodeAt(4 * i + 1) << 8) |
                       (text.charCodeAt(4 * i + 2) << 16) | (text.charCodeAt(4 * i + 3) << 24)) >>> 0;
    }
    drawnSinceSeed = 0;
  }
  function randomBytes(u) {  // fill the Uint8Array u
    const n = u.length, blocks = (n + 32 + 63) >> 6, words = new Uint32Array(blocks * 16);
    chachaBlocks(words, blocks);
    for (let i = 0; i < 8; i++) chachaKey[i] = words[i];  // fast key erasure: the first 32 bytes rekey
    if (!LITTLE_ENDIAN) {
      for (let i = 8; i < words.length; i++) {
        const w = words[i];
        words[i] = ((w & 255) << 24 | (w >>> 8 & 255) << 16 | (w >>> 16 & 255) << 8 | w >>> 24) >>> 0;
      }
    }
    chachaCounter = 0;
    u.set(new Uint8Array(words.buffer, 32, n));
    words.fill(0);
    drawnSinceSeed += n;
    if (drawnSinceSeed > RESEED_BYTES) { drawnSinceSeed = -Infinity; emit({t: 'entropy'}); }
  }
  R.seed(seedRandom);
  function getRandomValues(view) {
    if (!(view instanceof Int8Array || view instanceof Uint8Array || view instanceof Uint8ClampedArray ||
          view instanceof Int16Array || view instanceof Uint16Array || view instanceof Int32Array ||
          view instanceof Uint32Array || view instanceof BigInt64Array || view instanceof BigUint64Array)) {
      throw new TypeError('getRandomValues: argument must be an integer TypedArray');
    }
    const n = view.byteLength;
    if (n > 65536) throw new DOMException(`The ArrayBufferView's byte length (${n}) exceeds the number of bytes of entropy available via this API (65536)`, 'QuotaExceededError');
    randomBytes(new Uint8Array(view.buffer, view.byteOffset, n));
    return view;
  }
  function randomUUID() {
    const b = getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  const DIGESTS = {'SHA-1': 'sha1', 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512', 'MD5': 'md5'};
  const subtle = {};
  def(subtle, 'digest', async (algorithm, data) => {
    const name = String(typeof algorithm === 'string' ? algorithm : algorithm && algorithm.name).toUpperCase();
    if (!DIGESTS[name]) throw new DOMException(`Unrecognized algorithm name: ${name}`, 'NotSupportedError');
    const u = toBytes(data);
    if (!u) throw new TypeError('digest: data must be an ArrayBuffer or ArrayBufferView');
    return fromResult(await op({op: 'digest', alg: DIGESTS[name], d: bytesToB64(u)}), 0);
  });
  // HMAC keys only: importKey('raw', bytes, {name: 'HMAC', hash}), sign, verify (host ops to hmac).
  let cryptoKeyRaw;
  class CryptoKey {
    #raw;
    constructor(raw, algorithm, extractable, usages) {
      if (raw !== __internal) throw new TypeError('Illegal constructor');
      this.#raw = arguments[4]; this.type = 'secret'; this.algorithm = algorithm;
      this.extractable = extractable; this.usages = usages;
    }
    static { cryptoKeyRaw = (k) => k.#raw; }
  }
  function hmacHash(algorithm) {
    const hash = typeof algorithm.hash === 'string' ? algorithm.hash : algorithm.hash && algorithm.hash.name;
    const name = String(hash).toUpperCase();
    if (!DIGESTS[name] || name === 'MD5') throw new DOMException(`Unsupported hash: ${hash}`, 'NotSupportedError');
    return name;
  }
  def(subtle, 'importKey', async (format, keyData, algorithm, extractable, usages) => {
    const alg = typeof algorithm === 'string' ? {name: algorithm} : algorithm;
    if (format !== 'raw' || String(alg.name).toUpperCase() !== 'HMAC') {
      throw new DOMException('Only raw HMAC keys are supported by this runtime', 'NotSupportedError');
    }
    const raw = toBytes(keyData);
    if (!raw) throw new TypeError('importKey: keyData must be an ArrayBuffer or ArrayBufferView');
    const hash = hmacHash(alg);
    return new CryptoKey(__internal, {name: 'HMAC', hash: {name: hash}, length: raw.byteLength * 8}, !!extractable,
                         Array.from(usages || []), raw.slice());
  });
  async function hmac(usage, key, data) {
    if (!(key instanceof CryptoKey)) throw new TypeError('key must be a CryptoKey');
    if (!key.usages.includes(usage)) throw new DOMException(`key does not allow ${usage}`, 'InvalidAccessError');
    const u = toBytes(data);
    if (!u) throw new TypeError('data must be an ArrayBuffer or ArrayBufferView');
    return fromResult(await op({op: 'hmac', alg: DIGESTS[key.algorithm.hash.name], k: bytesToB64(cryptoKeyRaw(key)), d: bytesToB64(u)}), 0);
  }
  def(subtle, 'sign', (algorithm, key, data) => hmac('sign', key, data));
  def(subtle, 'verify', async (algorithm, key, signature, data) => {
    const expected = new Uint8Array(await hmac('verify', key, data));
    const got = toBytes(signature);
    if (!got || got.byteLength !== expected.byteLength) return false;
    let diff = 0;
    for (let i = 0; i < got.byteLength; i++) diff |= got[i] ^ expected[i];
    return diff === 0;
  });
  def(subtle, 'timingSafeEqual', (a, b) => {
    const x = toBytes(a), y = toBytes(b);
    if (!x || !y) throw new TypeError('timingSafeEqual: arguments must be ArrayBuffers or views');
    if (x.byteLength !== y.byteLength) throw new TypeError('Input buffers must have the same byte length');
    let diff = 0;
    for (let i = 0; i < x.byteLength; i++) diff |= x[i] ^ y[i];
    return diff === 0;
  });
  const crypto = {};
  def(crypto, 'getRandomValues', getRandomValues);
  def(crypto, 'randomUUID', randomUUID);
  def(crypto, 'subtle', subtle);
  GLOBALS.crypto = crypto;
  GLOBALS.CryptoKey = CryptoKey;
