/* The data validator of the envelope against jansson: whatever jansson
 * accepts (within our depth bound) we accept, and whatever we accept that
 * jansson refuses is one of the things jansson is stricter about than
 * RFC 8259 (integers past long long, reals past double, lone UTF-16
 * surrogate escapes, and a \u0000 escape in an object key, which jansson
 * refuses even with JSON_ALLOW_NUL because its keys are C strings). */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "protocol/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t depth_of(json_t *j) {
  size_t d = 0, i, k;
  const char *key;
  json_t *v;

  if (json_is_array(j)) {
    json_array_foreach(j, i, v) {
      k = depth_of(v);
      d = k > d ? k : d;
    }
    return d + 1;
  }
  if (json_is_object(j)) {
    json_object_foreach(j, key, v) {
      k = depth_of(v);
      d = k > d ? k : d;
    }
    return d + 1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  bool ours = envelope_is_json(s, size);
  json_error_t err;
  json_t *j = json_loadb(s, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);

  /* jansson reads a raw NUL byte outside strings as the end of the text;
   * RFC 8259 has no such rule, so those inputs prove nothing. */
  if (j != NULL && memchr(s, '\0', size) == NULL) {
    if (depth_of(j) <= 256)
      assert(ours && "jansson accepts what we reject");
  } else if (j == NULL && ours) {
    assert((strstr(err.text, "too big") != NULL ||
            strstr(err.text, "overflow") != NULL ||
            strstr(err.text, "nvalid Unicode") != NULL ||
            strstr(err.text, "surrogate") != NULL ||
            strstr(err.text, "maximum parsing depth") != NULL ||
            strstr(err.text, "NUL byte in object key") != NULL) &&
           "we accept what jansson rejects");
  }
  json_decref(j);
  return 0;
}
