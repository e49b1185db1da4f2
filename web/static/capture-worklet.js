// Microphone capture: resample the context rate to 16 kHz mono and post 20 ms int16 frames.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;  // input samples per output sample
    this.pos = 0;                    // fractional read position in the current block
    this.prev = 0;                   // last sample of the previous block (for interpolation)
    this.out = new Int16Array(320);
    this.n = 0;
    // two one-pole low-passes at ~7 kHz against aliasing before decimating to 16 kHz
    this.alpha = 1 - Math.exp(-2 * Math.PI * 7000 / sampleRate);
    this.lp1 = 0; this.lp2 = 0;
  }
  process(inputs) {
    const raw = inputs[0] && inputs[0][0];
    if (!raw) return true;
    const input = new Float32Array(raw.length);
    for (let i = 0; i < raw.length; i++) {
      this.lp1 += this.alpha * (raw[i] - this.lp1);
      this.lp2 += this.alpha * (this.lp1 - this.lp2);
      input[i] = this.lp2;
    }
    let pos = this.pos;
    while (pos < input.length) {
      const i = Math.floor(pos), frac = pos - i;
      const a = i === 0 ? this.prev : input[i - 1], b = input[i];
      const s = Math.max(-1, Math.min(1, a + (b - a) * frac));
      this.out[this.n++] = s * 32767;
      if (this.n === this.out.length) {
        this.port.postMessage(this.out.buffer, [this.out.buffer]);
        this.out = new Int16Array(320);
        this.n = 0;
      }
      pos += this.step;
    }
    this.pos = pos - input.length;
    this.prev = input[input.length - 1];
    return true;
  }
}
registerProcessor('capture-processor', CaptureProcessor);
