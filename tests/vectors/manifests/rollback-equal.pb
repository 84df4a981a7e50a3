
÷ctr"2026-01-01T00:00:00.000000Z*&
dense_featuresfloat32ÿÿÿÿÿÿÿÿÿ* 

sparse_idsint64ÿÿÿÿÿÿÿÿÿ2
scorefloat32
ÿÿÿÿÿÿÿÿÿ:Œ
fp32onnxruntime
model.onnx"Q

model.onnxì@4a098a19cab892cefb257ad1c32fa31e6157072baa6fc2e97365ece30fdf20ef"V
model.onnx.data€@2475375b4341d931ac3d5a66c36277e03c893f356eb02c56ef7d35a62ddb9585*@bc8a0db9f1161ee193d5b3621cec30c4ed16695e81aef095d7f8fcdb32e2c032:º
tflite_fp32litertmodel.tflite"S
model.tfliteè@ae9ceb7b199d7d52286814693793f11eaa50eaca1d636820bef91c93bd91a587*@85252dbcf5beb303e86b55f9dc8bbf8941e807f5eaf765f414e1d2a128c38a2cB2026-01-08T00:00:00.000000Z„
@6cef6b2eedeedd085967b5f8d9b5d8791b52406c9151d3a8234e7089a6a95e0d@hJmÛ,nj%ÑtjÿC¥g‡¤ÿ›Z~›êŒ†<§8Bóø4–ãú2©©ÝÈ1T“B3­>¨8£ÑøÚk¦