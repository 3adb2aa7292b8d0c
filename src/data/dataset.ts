/** An in-memory labelled image set, pixels as bytes in NCHW order. */
export interface ImageDataset {
  /** n * channels * height * width bytes, NCHW. */
  images: Uint8Array;
  /** One class index per image, in 0..numClasses-1. */
  labels: Int32Array;
  n: number;
  channels: number;
  height: number;
  width: number;
  numClasses: number;
  classNames?: string[];
  /** The caption vocabulary of these images (a key of data/captions.ts CAPTION_VOCABULARIES), when they have one. */
  captions?: string;
}
