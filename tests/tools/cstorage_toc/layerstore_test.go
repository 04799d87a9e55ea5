// containers/storage's own check of a zstd:chunked blob's TOC and tar-split (readZstdChunkedManifest,
// which runs ensureTOCMatchesTarSplit): copied into c/storage v1.55.0's pkg/chunked by check.sh.
package chunked

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/containers/storage/pkg/chunked/internal"
	"github.com/opencontainers/go-digest"
)

type memBlob []byte

func (b memBlob) GetBlobAt(chunks []ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	parts := make(chan io.ReadCloser, len(chunks))
	errs := make(chan error, 1)
	for _, c := range chunks {
		parts <- io.NopCloser(bytes.NewReader(b[c.Offset : c.Offset+c.Length]))
	}
	close(parts)

	return parts, errs, nil
}

func TestLayerstoreBlob(t *testing.T) {
	blob, err := os.ReadFile(os.Getenv("LS_BLOB"))
	if err != nil {
		t.Skip("no LS_BLOB")
	}
	var ann map[string]string
	if err := json.Unmarshal([]byte(os.Getenv("LS_ANNOTATIONS")), &ann); err != nil {
		t.Fatal(err)
	}
	_, toc, split, _, err := readZstdChunkedManifest(memBlob(blob), digest.Digest(ann[internal.ManifestChecksumKey]), ann)
	if err != nil {
		t.Fatal(err)
	}
	if len(split) == 0 {
		t.Fatal("no tar-split")
	}
	t.Logf("entries %d, tar-split %d bytes", len(toc.Entries), len(split))
}
